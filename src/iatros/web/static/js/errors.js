// Errors as the user reads them: known codes are translated, others keep the server's words.

import { ApiError } from "./api.js";
import { t } from "./i18n.js";

export function errorMessage(err) {
  if (err instanceof ApiError) {
    const known = `error.${err.code}`;
    const text = t(known);
    if (text !== known) return text;
    if (err.status === 0) return t("error.network_error");
    return `${t("error.generic", { status: err.status })} ${err.message}`;
  }
  return err?.message || String(err);
}

/**
 * Why the knowledge base could not take a file, in the user's language: the server names
 * the kind (`code`, with `params` such as the file type or the size limit) beside its
 * English `error`, which stays the fallback for a kind this interface does not know.
 */
export function ingestMessage(report) {
  const code = report?.code;
  if (!code) return report?.error || t("docs.failed");
  const key = `ingest.${code}`;
  const text = t(key, { ...(report.params || {}), detail: report.error || "" });
  return text === key ? report.error || t("docs.failed") : text;
}
