"""The ``Transcriber``: every speech-to-text request goes through it.

``POST /v1/audio/transcriptions``, the scribe and the CLI call it, so each gets the same
checks (size, format, decoding, length, speech present), the same routing (a deployment
list per language, later ones as fallbacks, breakers told of every outcome), the same
hallucination filtering and the same accounting (the caller's :class:`RequestContext`).

Deployments of ``kind: transcription`` name a provider that either implements
:class:`~iatros.providers.transcription.TranscriptionProvider` (``whisper``) or is an
OpenAI-compatible provider (``openai``, ``azure``), whose transcription side is wrapped
here: one provider entry serves chat, embeddings and transcription alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
import wave
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from iatros.clinical.speech.audio import AudioError, decode, speech_seconds
from iatros.clinical.speech.hallucinations import filter_segments
from iatros.clinical.speech.settings import TranscriptionSettings
from iatros.config import ConfigError
from iatros.errors import GatewayError, InvalidRequest, ModelNotFound, ServiceUnavailable
from iatros.gateway.context import RequestContext
from iatros.gateway.pipeline import Gateway
from iatros.providers.openai_compat import OpenAICompatProvider
from iatros.providers.transcription import (
    SAMPLE_RATE,
    TranscribeCall,
    TranscriptionProvider,
    TranscriptResult,
)
from iatros.providers.transcription_openai import wrap
from iatros.routing.router import Deployment

ANY = "*"


@dataclass(slots=True)
class Transcription:
    result: TranscriptResult
    deployment: str
    container: str


class Transcriber:
    def __init__(self, gateway: Gateway, settings: TranscriptionSettings) -> None:
        self.gateway = gateway
        self.settings = settings
        self.deployments = {
            name: dep
            for name, dep in gateway.deployments.items()
            if dep.config.kind == "transcription"
        }
        self._wrapped: dict[str, TranscriptionProvider] = {}
        self.providers: dict[str, TranscriptionProvider] = {}
        for name, dep in self.deployments.items():
            provider = dep.provider
            if isinstance(provider, TranscriptionProvider):
                self.providers[name] = provider
            elif isinstance(provider, OpenAICompatProvider):
                if provider.name not in self._wrapped:
                    self._wrapped[provider.name] = wrap(provider)
                self.providers[name] = self._wrapped[provider.name]
            else:
                raise ConfigError(
                    f"deployments.{name}.provider: provider {provider.name!r} "
                    f"({provider.type_name}) cannot transcribe"
                )
        self.routes = self._routes()
        for name in self.deployments:
            preload = getattr(self.providers[name], "preload_models", None)
            if preload is not None:
                models = [d.config.model for n, d in self.deployments.items()
                          if self.providers[n] is self.providers[name]]  # fmt: skip
                preload(models)

    def _routes(self) -> dict[str, list[str]]:
        configured = self.settings.languages
        if configured:
            for lang, names in configured.items():
                for name in names:
                    if name not in self.deployments:
                        raise ConfigError(
                            f"transcription.languages.{lang}: {name!r} is not a "
                            "deployment of kind transcription"
                        )
            return {lang: list(names) for lang, names in configured.items()}
        english = [n for n, d in self.deployments.items() if d.config.model.endswith(".en")]
        multi = [n for n in self.deployments if n not in english]
        return {"en": english + multi, ANY: multi} if self.deployments else {}

    @property
    def available(self) -> bool:
        return bool(self.deployments)

    async def start(self) -> None:
        for provider in self._wrapped.values():
            await provider.start()

    async def close(self) -> None:
        for provider in self._wrapped.values():
            with contextlib.suppress(Exception):
                await provider.close()

    def plan(self, model: str | None, language: str | None) -> tuple[list[Deployment], str]:
        """The deployments to try, in order, and the route decision for ``x-iatros-route``."""
        if not self.deployments:
            raise ServiceUnavailable(
                "No transcription model is configured (deployments of kind transcription).",
                code="transcription_unavailable",
            )
        if model and model not in self.settings.aliases:
            found = self.deployments.get(model)
            if found is None:
                raise ModelNotFound(
                    f"The model {model!r} is not a transcription model; use one of "
                    f"{', '.join([*self.settings.aliases, *self.deployments])}.",
                    param="model",
                )
            return [found], "direct"
        key = language if language in self.routes else ANY
        if language is None and key not in self.routes and len(self.routes) == 1:
            key = next(iter(self.routes))  # one language configured: audio is in it
        names = self.routes.get(key) or []
        if not names:
            configured = ", ".join(sorted(k for k in self.routes if k != ANY)) or "none"
            said = f"language {language!r}" if language else "audio without a language"
            raise InvalidRequest(
                f"No transcription model is configured for {said} (configured: {configured}; "
                "give one of them as language, or list models under transcription.languages "
                "'*' for any other).",
                param="language",
                code="unsupported_language",
            )
        # Deployments whose breaker refuses go last, never away (as for chat).
        health = self.gateway.router.health
        ordered = sorted(names, key=lambda n: not health[n].available())
        chosen = language or ("auto" if key == ANY else f"{key} (the only one configured)")
        decision = f"transcription; language={chosen}; pick={ordered[0]}"
        return [self.deployments[n] for n in ordered], decision

    def check(self, data: bytes, filename: str) -> tuple[TranscribeCall, str]:
        """Decode and check the audio (blocking: run it in a thread)."""
        audio = decode(data, self.settings.max_duration_s, self.settings.max_file_bytes)
        if self.settings.speech_check and speech_seconds(audio.samples) < (
            self.settings.min_speech_s
        ):
            raise AudioError(
                f"No speech was found in the {audio.duration_s:.1f} s of audio "
                "(silence or noise only).",
                "no_speech",
            )
        call = TranscribeCall(
            audio=data, filename=filename, samples=audio.samples, duration_s=audio.duration_s
        )
        return call, audio.container

    async def transcribe(
        self,
        ctx: RequestContext,
        data: bytes,
        filename: str,
        *,
        model: str | None = None,
        language: str | None = None,
        prompt: str | None = None,
        word_timestamps: bool = False,
    ) -> Transcription:
        """Check, route, transcribe and filter; accounts on ``ctx`` (the caller finishes it)."""
        ctx.model = model or "whisper-1"
        plan, decision = self.plan(model, language)
        ctx.route = decision
        ctx.deployment = plan[0].name
        call, container = await asyncio.to_thread(self.check, data, filename)
        call.language, call.prompt, call.word_timestamps = language, prompt, word_timestamps
        result, name = await self._run(ctx, plan, decision, call)
        ctx.usage.completion_tokens = len(result.text.split())
        return Transcription(result, name, container)

    async def transcribe_samples(
        self,
        ctx: RequestContext,
        samples: npt.NDArray[np.float32],
        *,
        language: str | None = None,
        filename: str = "chunk.wav",
    ) -> tuple[TranscriptResult, str]:
        """One chunk of a long recording, already decoded and checked (16 kHz mono).

        Routed, fallen back and filtered like :meth:`transcribe`; an upstream API gets the
        chunk as a WAV file. Adds the words to ``ctx``'s usage (the caller finishes it).
        """
        ctx.model = ctx.model or "whisper-1"
        plan, decision = self.plan(None, language)
        ctx.route = decision
        ctx.deployment = ctx.deployment or plan[0].name
        call = TranscribeCall(
            audio=wav_bytes(samples), filename=filename, samples=samples,
            duration_s=samples.size / SAMPLE_RATE, language=language,
        )  # fmt: skip
        result, name = await self._run(ctx, plan, decision, call)
        ctx.usage.completion_tokens += len(result.text.split())
        return result, name

    async def _run(
        self, ctx: RequestContext, plan: list[Deployment], decision: str, call: TranscribeCall
    ) -> tuple[TranscriptResult, str]:
        """Try the deployments in order; the first answer, filtered, and who gave it."""
        tried: list[str] = []
        last: GatewayError | None = None
        for deployment in plan:
            tried.append(deployment.name)
            health = self.gateway.router.health[deployment.name]
            started = time.perf_counter()
            try:
                result = await self.providers[deployment.name].transcribe(deployment.config, call)
            except InvalidRequest:
                raise
            except GatewayError as exc:
                health.record_failure(exc.code or "error")
                self.gateway.metrics.count_failure(deployment.name, exc.code or "error")
                last = exc
                continue
            finally:
                ctx.upstream_s += time.perf_counter() - started
            health.record_success(time.perf_counter() - started)
            ctx.deployment = deployment.name
            if len(tried) > 1:
                ctx.route = f"{decision}; tried={'>'.join(tried)}"
            filter_segments(result, self.settings.low_confidence_logprob)
            return result, deployment.name
        assert last is not None
        raise last


def wav_bytes(samples: npt.NDArray[np.float32]) -> bytes:
    """16 kHz mono 16-bit WAV of ``samples`` (what an upstream API is sent for a chunk)."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes((np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes())
    return buf.getvalue()
