// The Radiographs view's elements: the patient and upload panel, the study with its image
// strip, toolbar, window/level sliders, canvas, annotation form and list, the AI panel and
// the signing form. Built once; the texts follow the language through data-i18n.

import { clear, h } from "./dom.js";
import { applyTranslations } from "./i18n.js";

export const FINDINGS = ["caries", "deep_caries", "periapical_lesion", "impacted_tooth", "restoration", "bone_loss", "other"];
export const TOOLS = ["pan", "measure", "box", "polygon", "point"];
export const TOOL_KEYS = { v: "pan", m: "measure", b: "box", g: "polygon", t: "point" };
export const ACCEPT = ".dcm,.dicom,application/dicom,image/png,image/jpeg,.png,.jpg,.jpeg";


function toolButton(tool, a) {
  return h("button", {
    type: "button", class: "btn btn-small rad-tool", id: `rad-tool-${tool}`, dataset: { tool },
    "aria-pressed": tool === "pan" ? "true" : "false", "data-i18n": `rad.tool_${tool}`,
    "aria-keyshortcuts": Object.keys(TOOL_KEYS).find((k) => TOOL_KEYS[k] === tool),
    onclick: () => a.chooseTool(tool),
  });
}

/**
 * Build the view's elements into `view` (once; `data-i18n` texts follow the language).
 * `a` holds the actions the controls call: chooseTool, zoomBy, fit, toggleInvert, resetView,
 * startRedraw, closeForm, analyse, showAi, sign, download.
 */
export function buildLayout(view, a) {
  clear(view);
  const findingOptions = FINDINGS.map((f) => h("option", { value: f, "data-i18n": `rad.finding_${f}` }));
  view.append(
    h("div", { class: "view-head" }, h("h1", { id: "rad-title", "data-i18n": "rad.title" })),
    h("div", { class: "rad-grid" },
      h("aside", { class: "card rad-side", "aria-labelledby": "rad-patient-title" },
        h("h2", { id: "rad-patient-title", "data-i18n": "rad.patient_title" }),
        h("form", { id: "rad-patient-form", class: "rad-patient", novalidate: true },
          h("label", { for: "rad-patient", "data-i18n": "rad.patient_id" }),
          h("div", { class: "row" },
            h("input", { id: "rad-patient", autocomplete: "off", maxlength: 128, required: true, "aria-describedby": "rad-patient-error" }),
            h("button", { type: "submit", class: "btn", "data-i18n": "rad.show_studies" })),
          h("p", { id: "rad-patient-error", class: "error-text", hidden: true })),
        h("p", { id: "rad-studies-status", class: "hint", "aria-live": "polite" }),
        h("ul", { id: "rad-studies", class: "rad-studies", "data-i18n-attr": "aria-label:rad.studies" }),
        h("section", { class: "rad-upload", "aria-labelledby": "rad-upload-title" },
          h("h3", { id: "rad-upload-title", "data-i18n": "rad.upload_title" }),
          h("label", { for: "rad-description", "data-i18n": "rad.description" }),
          h("input", { id: "rad-description", autocomplete: "off", maxlength: 200 }),
          h("div", { id: "rad-drop", class: "dropzone rad-drop" },
            h("p", { "data-i18n": "rad.drop" }),
            h("input", { id: "rad-files", class: "file-input", type: "file", multiple: true, accept: ACCEPT }),
            h("label", { for: "rad-files", class: "btn", "data-i18n": "rad.choose" }),
            h("p", { class: "hint", "data-i18n": "rad.formats" })),
          h("p", { id: "rad-upload-status", class: "hint", role: "status" }),
          h("ul", { id: "rad-uploads", class: "upload-list rad-uploads" }))),
      h("section", { id: "rad-study", class: "card rad-main", hidden: true, "aria-labelledby": "rad-study-title" },
        h("div", { class: "rad-study-head" },
          h("h2", { id: "rad-study-title" }),
          h("span", { id: "rad-study-state", class: "pill badge" })),
        h("p", { id: "rad-study-meta", class: "hint" }),
        h("ul", { id: "rad-thumbs", class: "rad-thumbs", "data-i18n-attr": "aria-label:rad.images_label" }),
        h("div", { id: "rad-workspace", hidden: true },
          h("div", { class: "rad-toolbar", role: "toolbar", id: "rad-toolbar", "data-i18n-attr": "aria-label:rad.tools" },
            h("div", { class: "rad-tools", role: "group", "data-i18n-attr": "aria-label:rad.tools_draw" }, TOOLS.map((tool) => toolButton(tool, a))),
            h("div", { class: "rad-zoom", role: "group", "data-i18n-attr": "aria-label:rad.zoom" },
              h("button", { type: "button", class: "btn btn-small", id: "rad-zoom-out", "data-i18n-attr": "aria-label:rad.zoom_out", "aria-keyshortcuts": "-", onclick: () => a.zoomBy(0.8) }, "−"),
              h("output", { id: "rad-zoom-level", class: "rad-zoom-level", "aria-live": "off" }, "100 %"),
              h("button", { type: "button", class: "btn btn-small", id: "rad-zoom-in", "data-i18n-attr": "aria-label:rad.zoom_in", "aria-keyshortcuts": "+", onclick: () => a.zoomBy(1.25) }, "+"),
              h("button", { type: "button", class: "btn btn-small", id: "rad-fit", "data-i18n": "rad.fit", "aria-keyshortcuts": "0", onclick: () => a.fit() })),
            h("div", { class: "rad-view-btns", role: "group", "data-i18n-attr": "aria-label:rad.display" },
              h("button", { type: "button", class: "btn btn-small", id: "rad-invert", "aria-pressed": "false", "data-i18n": "rad.invert", "aria-keyshortcuts": "i", onclick: a.toggleInvert }),
              h("button", { type: "button", class: "btn btn-small", id: "rad-reset", "data-i18n": "rad.reset", onclick: a.resetView }))),
          h("div", { class: "rad-viewer" },
            h("div", { class: "rad-view-col" },
              h("div", { class: "rad-stage" },
                h("canvas", { id: "rad-canvas", tabindex: "0", role: "application", "data-i18n-attr": "aria-label:rad.canvas_label", "aria-describedby": "rad-kb-help rad-scale" }),
                h("p", { id: "rad-loading", class: "rad-loading", hidden: true, "data-i18n": "rad.rendering" })),
              h("div", { class: "rad-wl" },
                h("div", { class: "field" },
                  h("label", { for: "rad-wc", "data-i18n": "rad.level" }),
                  h("div", { class: "row" }, h("input", { id: "rad-wc", type: "range", step: 1 }), h("output", { id: "rad-wc-value", for: "rad-wc" }))),
                h("div", { class: "field" },
                  h("label", { for: "rad-ww", "data-i18n": "rad.width" }),
                  h("div", { class: "row" }, h("input", { id: "rad-ww", type: "range", step: 1 }), h("output", { id: "rad-ww-value", for: "rad-ww" }))),
                h("p", { class: "hint", "data-i18n": "rad.wl_hint" }))),
            h("div", { class: "rad-panel" },
              h("p", { id: "rad-scale", class: "hint" }),
              h("p", { id: "rad-deid", class: "hint rad-deid" }),
              h("p", { id: "rad-measure", class: "rad-measure", "aria-live": "polite" }),
              h("p", { id: "rad-hint", class: "hint rad-hint", "aria-live": "polite" }),
              h("form", { id: "rad-ann-form", class: "rad-form", hidden: true, novalidate: true, "aria-labelledby": "rad-form-title" },
                h("h3", { id: "rad-form-title" }),
                h("label", { for: "rad-finding", "data-i18n": "rad.finding" }),
                h("select", { id: "rad-finding" }, findingOptions),
                h("label", { for: "rad-tooth", "data-i18n": "rad.tooth" }),
                h("input", { id: "rad-tooth", inputmode: "numeric", autocomplete: "off", maxlength: 2, "aria-describedby": "rad-tooth-hint rad-tooth-error" }),
                h("p", { id: "rad-tooth-hint", class: "hint", "data-i18n": "rad.tooth_hint" }),
                h("p", { id: "rad-tooth-error", class: "error-text", hidden: true }),
                h("label", { for: "rad-note", "data-i18n": "rad.note" }),
                h("textarea", { id: "rad-note", rows: 2, maxlength: 2000 }),
                h("p", { id: "rad-form-error", class: "error-text", role: "alert", hidden: true }),
                h("div", { class: "row" },
                  h("button", { type: "submit", class: "btn btn-primary", id: "rad-form-save" }),
                  h("button", { type: "button", class: "btn", id: "rad-form-redraw", "data-i18n": "rad.redraw", onclick: a.startRedraw }),
                  h("button", { type: "button", class: "btn btn-ghost", id: "rad-form-cancel", "data-i18n": "rad.cancel", onclick: a.closeForm }))),
              h("section", { class: "rad-ai", "aria-labelledby": "rad-ai-title" },
                h("h3", { id: "rad-ai-title", "data-i18n": "rad.ai_title" }),
                h("div", { id: "rad-ai-none", class: "notice", hidden: true },
                  h("p", { "data-i18n": "rad.ai_none" }),
                  h("p", { class: "hint", "data-i18n": "rad.ai_configure" }),
                  h("code", { id: "rad-ai-how", class: "rad-ai-how" })),
                h("button", { type: "button", class: "btn btn-primary", id: "rad-analyse", hidden: true, "data-i18n": "rad.analyse", onclick: a.analyse }),
                h("p", { id: "rad-ai-status", class: "hint", role: "status" }),
                h("details", { id: "rad-ai-raw", class: "rad-ai-raw", hidden: true },
                  h("summary", { "data-i18n": "rad.ai_unparsed" }),
                  h("pre", { id: "rad-ai-raw-text" }))),
              h("section", { class: "rad-anns", "aria-labelledby": "rad-anns-title" },
                h("div", { class: "rad-anns-head" },
                  h("h3", { id: "rad-anns-title", "data-i18n": "rad.annotations" }),
                  h("label", { class: "check" },
                    h("input", { type: "checkbox", id: "rad-show-ai", checked: true, onchange: (e) => a.showAi(e.target.checked) }),
                    h("span", { "data-i18n": "rad.show_ai" }))),
                h("ul", { id: "rad-ann-list", class: "rad-ann-list", "aria-labelledby": "rad-anns-title" })))),
          h("p", { id: "rad-kb-help", class: "hint rad-kb-help", "data-i18n": "rad.kb_help" })),
        h("section", { id: "rad-sign", class: "rad-sign", "aria-labelledby": "rad-sign-title" },
          h("h3", { id: "rad-sign-title", "data-i18n": "rad.report" }),
          h("div", { id: "rad-sign-form" },
            h("label", { for: "rad-signer", "data-i18n": "rad.signer" }),
            h("input", { id: "rad-signer", autocomplete: "name", maxlength: 200 }),
            h("label", { for: "rad-conclusion", "data-i18n": "rad.conclusion" }),
            h("textarea", { id: "rad-conclusion", rows: 3, maxlength: 8000, "aria-describedby": "rad-sign-error" }),
            h("p", { id: "rad-sign-error", class: "error-text", role: "alert", hidden: true }),
            h("button", { type: "button", class: "btn btn-primary", id: "rad-sign-btn", "data-i18n": "rad.sign", onclick: a.sign })),
          h("div", { id: "rad-signed", hidden: true },
            h("p", { id: "rad-signed-text", class: "rad-signed-text" }),
            h("blockquote", { id: "rad-signed-conclusion", class: "rad-conclusion" }),
            h("div", { class: "row" },
              h("button", { type: "button", class: "btn", id: "rad-pdf", "data-i18n": "rad.pdf", onclick: () => a.download("report.pdf") }),
              h("button", { type: "button", class: "btn", id: "rad-fhir", "data-i18n": "rad.fhir", onclick: () => a.download("fhir") })))))),
    h("p", { id: "rad-live", class: "visually-hidden", "aria-live": "polite" }),
  );
  applyTranslations(view);
}
