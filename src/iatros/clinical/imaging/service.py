"""The radiograph service: upload, processing job, renditions, annotations, analysis,
signing and exports — transport-free, called by ``api/radiographs.py``.

An upload is validated in full (every file decoded once) before anything is stored, so a
batch is all-or-nothing. The study and its images are then recorded as ``processing``
and one background job (``radiographs.ingest`` on the shared queue) de-identifies, masks
and renders each image; the raw files travel to the job sealed (AES-GCM), never in clear,
and are not kept. Every access to a study is audited with the patient as a keyed hash.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from iatros.auth import Principal
from iatros.clinical.imaging import annotations as rules
from iatros.clinical.imaging import pixels
from iatros.clinical.imaging.findings import CONFIGURE_HINT, ImageAnalyst
from iatros.clinical.imaging.formats import Probe, describe_support, probe
from iatros.clinical.imaging.ingest import process
from iatros.clinical.imaging.records import ImageData, NewImage, RadiographStore
from iatros.clinical.scribe.crypto import Sealer
from iatros.errors import Conflict, InvalidRequest
from iatros.gateway.chat import ChatService
from iatros.governance.service import Governance
from iatros.jobs import JobContext, JobNotFound, JobQueue

if TYPE_CHECKING:
    from iatros.config import Settings

JOB = "radiographs.ingest"
log = logging.getLogger("iatros.radiographs")
_PIXEL_WORK = ThreadPoolExecutor(max_workers=1, thread_name_prefix="iatros-radiographs")
"""Decoding, processing and rendering run here, one image at a time: a 3000x1500 panoramic
takes about 150 MiB while it is processed (numpy buffers), and one thread reuses one
allocator arena, where every new thread of the default executor would leave its own
(measured: bench/radiograph_bench.py)."""
T = TypeVar("T")


async def _pixel_work(fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(_PIXEL_WORK, partial(fn, *args))


class RadiographService:
    def __init__(self, chat: ChatService, governance: Governance, jobs: JobQueue,
                 settings: Settings) -> None:  # fmt: skip
        self.governance = governance
        self.jobs = jobs
        self.settings = settings.imaging
        self.practice = settings.scribe.practice_name
        self.sealer = Sealer(governance.chain.keyring)
        self.store = RadiographStore(governance.db, self.sealer)
        self.analyst = ImageAnalyst(chat, settings)
        self.deid_secret = hmac.new(governance.secret, b"radiograph-deid", hashlib.sha256).digest()
        jobs.register(JOB, self._run, max_attempts=3)

    # -- audit -----------------------------------------------------------------------------

    def _audit(self, principal: Principal, action: str, target: str, patient_ref: str,
               **details: Any) -> None:  # fmt: skip
        self.governance.audit(
            tenant=principal.tenant, actor=principal.key_id, action=action, target=target,
            details={"patient": patient_ref, **details},
        )  # fmt: skip

    def status(self) -> dict[str, Any]:
        return {"vision_models": self.analyst.available(), "configure": CONFIGURE_HINT,
                **describe_support()}  # fmt: skip

    # -- upload and processing -------------------------------------------------------------

    async def upload(self, principal: Principal, patient_id: str, description: str | None,
                     files: Sequence[tuple[str, bytes]]) -> dict[str, Any]:  # fmt: skip
        if not files:
            raise InvalidRequest("Send at least one file in 'files'.", param="files")
        if len(files) > self.settings.max_files:
            raise InvalidRequest(
                f"At most {self.settings.max_files} files per study.", param="files",
                code="too_many_files",
            )  # fmt: skip

        def validate() -> list[Probe]:
            return [probe(data, self.settings, f"files.{i}") for i, (_, data) in enumerate(files)]

        probes = await _pixel_work(validate)
        tenant = principal.tenant
        patient_ref = self.governance.patient_ref(patient_id)
        details = {"patient_id": patient_id, "description": description,
                   "files": [name for name, _ in files]}  # fmt: skip
        images = [NewImage(p.kind, p.width, p.height, p.modality) for p in probes]
        sid, ids = await asyncio.to_thread(
            self.store.create_study, tenant, principal.key_id, patient_ref, details, images
        )
        try:
            sealed = {iid: self.sealer.seal(data, self.store.aad(tenant, iid, "upload"))
                      for iid, (_, data) in zip(ids, files, strict=True)}  # fmt: skip
            job_id = await self.jobs.enqueue(
                JOB, {"study_id": sid, "images": ids}, tenant=tenant, idempotency_key=sid,
                attachments=sealed,
            )  # fmt: skip
        except BaseException:
            await asyncio.to_thread(self.store.drop_study, tenant, sid)
            raise
        await asyncio.to_thread(self.store.set_job, tenant, sid, job_id)
        self._audit(principal, "radiographs.study.create", sid, patient_ref, images=len(ids),
                    kinds=sorted({p.kind for p in probes}))  # fmt: skip
        return await asyncio.to_thread(self.store.study, tenant, sid)

    async def _run(self, job: JobContext) -> dict[str, Any]:
        """The background job: each image processed, sealed and stored, with progress."""
        tenant = job.tenant
        sid = str(job.payload["study_id"])
        ids = [str(i) for i in job.payload["images"]]
        states = dict(await asyncio.to_thread(self.store.image_ids, tenant, sid))
        done = failed = 0
        for n, iid in enumerate(ids):
            if states.get(iid) == "ready":  # a retried job: this one is done
                done += 1
                continue
            await job.progress({"study_id": sid, "image": n, "images": len(ids),
                                "done": done, "failed": failed})  # fmt: skip
            blob = await job.attachment(iid)
            try:
                if blob is None:
                    raise LookupError("the uploaded file is no longer available")
                data = self.sealer.open(blob, self.store.aad(tenant, iid, "upload"))

                def step(value: float, iid: str = iid) -> None:
                    self.store.progress(tenant, iid, value)

                result = await _pixel_work(process, data, self.deid_secret, self.settings, step)
                del data
                store = partial(self.store.store_image, meta=result.meta, pixels=result.pixels,
                                preview=result.preview, thumbnail=result.thumbnail)  # fmt: skip
                await _pixel_work(store, tenant, iid)
                done += 1
            except Exception as exc:  # one bad image does not stop the others
                log.warning("radiograph processing failed", extra={"image": iid,
                            "error": type(exc).__name__})  # fmt: skip
                await asyncio.to_thread(self.store.progress, tenant, iid, 1.0, "failed",
                                        f"processing failed: {type(exc).__name__}")  # fmt: skip
                failed += 1
        await asyncio.to_thread(
            self.store.set_study_status, tenant, sid, "ready" if done else "failed"
        )
        return {"study_id": sid, "ready": done, "failed": failed}

    # -- reading ---------------------------------------------------------------------------

    async def _settle(self, tenant: str, study: dict[str, Any]) -> dict[str, Any]:
        """A study still ``processing`` whose job is gone (the in-process queue lost it in a
        restart) or dead is marked failed, instead of processing forever."""
        if study["status"] != "processing":
            return study
        job_id = await asyncio.to_thread(self.store.job_of, tenant, study["id"])
        if job_id is None:  # being enqueued right now
            return study
        state: str
        try:
            state = (await self.jobs.status(job_id, tenant=tenant)).state
        except JobNotFound:
            state = "lost"
        if state not in ("lost", "dead", "cancelled"):
            return study
        reason = f"processing was interrupted (job {state}): upload the file again"
        await asyncio.to_thread(self.store.interrupt, tenant, study["id"], reason)
        return await asyncio.to_thread(self.store.study, tenant, study["id"])

    async def study(self, principal: Principal, study_id: str) -> dict[str, Any]:
        study = await asyncio.to_thread(self.store.study, principal.tenant, study_id)
        study = await self._settle(principal.tenant, study)
        self._audit(principal, "radiographs.study.read", study_id, study["patient"])
        return study

    async def studies(self, principal: Principal, patient_id: str | None) -> list[dict[str, Any]]:
        ref = self.governance.patient_ref(patient_id) if patient_id else None
        found = await asyncio.to_thread(self.store.studies, principal.tenant, ref)
        found = [await self._settle(principal.tenant, s) for s in found]
        self._audit(principal, "radiographs.study.list", ref or "*", ref or "*",
                    studies=len(found))  # fmt: skip
        return found

    async def _image(self, principal: Principal, image_id: str, *fields: str) -> ImageData:
        return await asyncio.to_thread(self.store.image_data, principal.tenant, image_id, *fields)

    @staticmethod
    def _ready(img: ImageData) -> None:
        if img.status != "ready":
            raise Conflict(f"The image is {img.status}, not ready yet.", code="image_not_ready")

    async def thumbnail(self, principal: Principal, image_id: str) -> bytes:
        img = await self._image(principal, image_id, "thumbnail")
        self._ready(img)
        self._audit(principal, "radiographs.image.thumbnail", image_id, img.patient_ref)
        assert img.thumbnail is not None
        return img.thumbnail

    async def render(self, principal: Principal, image_id: str, center: float | None,
                     width: float | None, invert: bool) -> bytes:  # fmt: skip
        default = center is None and width is None
        img = await self._image(principal, image_id, "preview" if default else "pixels")
        self._ready(img)
        self._audit(principal, "radiographs.image.render", image_id, img.patient_ref,
                    center=center, width=width, invert=invert)  # fmt: skip

        def draw() -> bytes:
            if default:
                assert img.preview is not None
                if not invert:
                    return img.preview
                from PIL import Image, ImageOps

                with Image.open(io.BytesIO(img.preview)) as shown:
                    return pixels.png(np.asarray(ImageOps.invert(shown.convert("L"))))
            assert img.pixels is not None
            display = pixels.Display.from_dict(img.meta["display"])
            array = pixels.unpack(img.pixels)
            return pixels.png(pixels.render(array, display, center=center, width=width,
                                            invert=invert))  # fmt: skip

        return await _pixel_work(draw)

    # -- annotations -----------------------------------------------------------------------

    async def annotations(self, principal: Principal, image_id: str) -> list[dict[str, Any]]:
        img = await self._image(principal, image_id)
        found = await asyncio.to_thread(self.store.annotations, principal.tenant, image_id)
        self._audit(principal, "radiographs.annotation.list", image_id, img.patient_ref)
        return found

    async def annotate(self, principal: Principal, image_id: str, body: dict[str, Any]
                       ) -> dict[str, Any]:  # fmt: skip
        img = await self._image(principal, image_id)
        if img.signed:
            raise Conflict("The study is signed: its annotations are read-only.",
                           code="study_signed")  # fmt: skip
        content = {
            "shape": body["shape"],
            "points": rules.check_points(body["shape"], body["points"], img.width, img.height),
            "finding": rules.check_finding(body["finding"]),
            "tooth": rules.check_tooth(body.get("tooth")),
            "note": body.get("note"),
            "confidence": None,
            "explanation": None,
        }
        [made] = await asyncio.to_thread(
            self.store.add_annotations, principal.tenant, image_id, principal.key_id,
            "clinician", "accepted", [content],
        )  # fmt: skip
        self._audit(principal, "radiographs.annotation.create", made["id"], img.patient_ref,
                    image=image_id)  # fmt: skip
        return made

    async def edit_annotation(self, principal: Principal, annotation_id: str, version: int,
                              changes: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
        current, img = await asyncio.to_thread(
            self.store.annotation, principal.tenant, annotation_id
        )
        if img.signed:
            raise Conflict("The study is signed: its annotations are read-only.",
                           code="study_signed")  # fmt: skip
        content: dict[str, Any] = {}
        if "points" in changes:
            content["points"] = rules.check_points(current["shape"], changes["points"],
                                                   img.width, img.height)  # fmt: skip
        if "finding" in changes:
            content["finding"] = rules.check_finding(changes["finding"])
        if "tooth" in changes:
            content["tooth"] = rules.check_tooth(changes["tooth"])
        if "note" in changes:
            content["note"] = changes["note"]
        status = changes.get("status")
        if status is not None and status not in rules.STATUSES:
            raise InvalidRequest(f"Unknown status {status!r}.", param="status")
        updated = await asyncio.to_thread(
            self.store.update_annotation, principal.tenant, annotation_id, version, content,
            status,
        )  # fmt: skip
        self._audit(principal, "radiographs.annotation.update", annotation_id, img.patient_ref,
                    fields=sorted(changes), status=updated["status"])  # fmt: skip
        return updated

    async def delete_annotation(self, principal: Principal, annotation_id: str) -> None:
        _, img = await asyncio.to_thread(self.store.annotation, principal.tenant, annotation_id)
        await asyncio.to_thread(self.store.delete_annotation, principal.tenant, annotation_id)
        self._audit(principal, "radiographs.annotation.delete", annotation_id, img.patient_ref)

    # -- AI second opinion -----------------------------------------------------------------

    async def analyse(self, principal: Principal, image_id: str, language: str = "en",
                      model: str | None = None) -> dict[str, Any]:  # fmt: skip
        img = await self._image(principal, image_id, "preview")
        self._ready(img)
        if img.signed:
            raise Conflict("The study is signed: its annotations are read-only.",
                           code="study_signed")  # fmt: skip
        details = await asyncio.to_thread(self.store.details, principal.tenant, img.study_id)
        assert img.preview is not None
        analysis = await self.analyst.analyse(
            principal, img.preview, width=img.width, height=img.height,
            patient_id=details.get("patient_id"), language=language, model=model,
        )  # fmt: skip
        contents = [rules.from_ai(f, img.width, img.height) for f in analysis.findings]
        made = await asyncio.to_thread(
            self.store.add_annotations, principal.tenant, image_id,
            (analysis.model or "ai")[:32], "ai", "proposed", contents, replace_proposed=True,
        )  # fmt: skip
        self._audit(principal, "radiographs.image.analyse", image_id, img.patient_ref,
                    model=analysis.model, parsed=analysis.parsed, findings=len(made),
                    request_id=analysis.request_id)  # fmt: skip
        return {
            "analysis": {"parsed": analysis.parsed, "raw_text": analysis.raw_text,
                         "model": analysis.model, "request_id": analysis.request_id},
            "annotations": made,
        }  # fmt: skip

    # -- signing and exports ---------------------------------------------------------------

    async def sign(self, principal: Principal, study_id: str, conclusion: str,
                   name: str | None) -> dict[str, Any]:  # fmt: skip
        signature = {
            "conclusion": conclusion,
            "signer": {"name": name, "key": principal.key_id},
            "signed_at": datetime.now(UTC).isoformat(),
        }
        await asyncio.to_thread(
            self.store.sign, principal.tenant, study_id, principal.key_id, signature
        )
        study = await asyncio.to_thread(self.store.study, principal.tenant, study_id)
        self._audit(principal, "radiographs.study.sign", study_id, study["patient"])
        return study

    async def export_material(self, principal: Principal, study_id: str, action: str
                              ) -> dict[str, Any]:  # fmt: skip
        """What the report and the FHIR bundle are made of: only accepted annotations."""
        tenant = principal.tenant

        def gather() -> dict[str, Any]:
            study = self.store.study(tenant, study_id)
            details = self.store.details(tenant, study_id)
            accepted = [a for a in self.store.study_annotations(tenant, study_id)
                        if a["status"] == "accepted"]  # fmt: skip
            previews = {}
            headers = {}
            for image in study["images"]:
                if image["status"] == "ready":
                    data = self.store.image_data(tenant, image["id"], "preview")
                    previews[image["id"]] = data.preview
                    headers[image["id"]] = data.meta.get("header") or {}
            return {
                "study": study, "details": details, "annotations": accepted,
                "previews": previews, "headers": headers, "practice": self.practice,
            }  # fmt: skip

        material = await asyncio.to_thread(gather)
        self._audit(principal, action, study_id, material["study"]["patient"],
                    findings=len(material["annotations"]))  # fmt: skip
        return material

    async def report_pdf(self, principal: Principal, study_id: str) -> bytes:
        from iatros.clinical.imaging.report import render_report

        material = await self.export_material(principal, study_id, "radiographs.export.pdf")
        return await asyncio.to_thread(render_report, material)

    async def structured_report(self, principal: Principal, study_id: str) -> bytes:
        from iatros.clinical.imaging.sr import build_sr

        material = await self.export_material(principal, study_id, "radiographs.export.sr")
        return await asyncio.to_thread(build_sr, material)

    async def fhir(self, principal: Principal, study_id: str) -> dict[str, Any]:
        from iatros.clinical.imaging.fhir import build_bundle

        material = await self.export_material(principal, study_id, "radiographs.export.fhir")
        return await asyncio.to_thread(build_bundle, material)
