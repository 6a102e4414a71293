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
