"""The faithfulness check (``iatros.gateway.verification``) on each kind of decisive detail.

Two layers, both fast (no model, no server):

- one grounded answer per kind of decisive detail, in English and in French: a number
  (dose, concentration), a unit, a drug, a side, a negation, a tooth number, a frequency,
  a duration; and the paraphrases that must pass (converted units, numbers in words,
  reordered clauses, brand names);
- the whole triple set of ``bench/data/faithfulness`` (hand-written answers on our practice
  documents and rule-made answers on PubMedQA abstracts when ``../shared/data/pubmedqa`` is
  there): every wrong answer must be flagged, and at most 10 % of correct answers may be.
  ``bench/faithfulness_bench.py`` reports the same set as figures.

Cases the current checker gets wrong are marked ``xfail(strict=True)`` one by one with the
reason, so a fix turns them into failures-to-fail that must be unmarked, and a regression
anywhere else fails at once.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from iatros.gateway.verification import check

ROOT = Path(__file__).resolve().parents[1]


def _load_builder() -> ModuleType:
    path = ROOT / "bench" / "data" / "faithfulness" / "build.py"
    spec = importlib.util.spec_from_file_location("faithfulness_build", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


build = _load_builder()

EN_SOURCE = (
    "Adults should brush twice daily with a toothpaste containing 1350 to 1500 ppm fluoride. "
    "For adults, prescribe amoxicillin 500 mg three times a day for 5 days. "
    "Do not rinse the mouth for 24 hours after an extraction. "
    "Tooth 38 is the lower left third molar."
)
FR_SOURCE = (
    "Les adultes se brossent les dents deux fois par jour avec un dentifrice dosé à 1450 ppm "
    "de fluor. Chez l'adulte, prescrire de l'amoxicilline 500 mg trois fois par jour pendant "
    "5 jours. Ne pas rincer la bouche pendant 24 heures après une extraction. "
    "La dent 38 est la troisième molaire inférieure gauche."
)
SOURCES = {"en": EN_SOURCE, "fr": FR_SOURCE}
EN_Q = "What should an adult do?"
FR_Q = "Que doit faire un adulte ?"

# (lang, answer, the kind of the one unsupported detail)
WRONG = {
    "en-dose": ("en", "Prescribe amoxicillin 250 mg three times a day for 5 days [1].", "number"),
    "en-concentration": ("en", "Use a toothpaste with 500 to 1280 ppm fluoride [1].", "number"),
    "en-unit": ("en", "Prescribe amoxicillin 500 g three times a day for 5 days [1].", "number"),
    "en-unit-per-kg": ("en", "Prescribe amoxicillin 500 mg/kg three times a day [1].", "number"),
    "en-drug": ("en", "Prescribe ampicillin 500 mg three times a day for 5 days [1].", "drug"),
    "en-side": ("en", "Tooth 38 is the lower right third molar [1].", "laterality"),
    "en-arch": ("en", "Tooth 38 is the upper left third molar [1].", "laterality"),
    "en-negation": ("en", "Rinse the mouth for 24 hours after an extraction [1].", "negation"),
    "en-tooth": ("en", "Tooth 48 is the lower left third molar [1].", "number"),
    "en-frequency": ("en", "Prescribe amoxicillin 500 mg four times a day for 5 days [1].",
                     "number"),
    "en-duration": ("en", "Prescribe amoxicillin 500 mg three times a day for 10 days [1].",
                    "number"),
    "en-wait": ("en", "Do not rinse the mouth for 12 hours after an extraction [1].", "number"),
    "fr-dose": ("fr", "Prescrire de l'amoxicilline 250 mg trois fois par jour pendant 5 jours "
                "[1].", "number"),
    "fr-concentration": ("fr", "Un dentifrice dosé à 1000 ppm de fluor [1].", "number"),
    "fr-unit": ("fr", "Prescrire de l'amoxicilline 500 g trois fois par jour [1].", "number"),
    "fr-drug": ("fr", "Prescrire de la clindamycine 500 mg trois fois par jour pendant 5 jours "
                "[1].", "drug"),
    "fr-side": ("fr", "La dent 38 est la troisième molaire inférieure droite [1].",
                "laterality"),
    "fr-arch": ("fr", "La dent 38 est la troisième molaire supérieure gauche [1].",
                "laterality"),
    "fr-negation": ("fr", "Rincer la bouche pendant 24 heures après une extraction [1].",
                    "negation"),
    "fr-tooth": ("fr", "La dent 28 est la troisième molaire inférieure gauche [1].", "number"),
    "fr-frequency": ("fr", "Prescrire de l'amoxicilline 500 mg quatre fois par jour pendant "
                     "5 jours [1].", "number"),
    "fr-duration": ("fr", "Prescrire de l'amoxicilline 500 mg trois fois par jour pendant "
                    "10 jours [1].", "number"),
}  # fmt: skip

# (lang, answer): correct answers in other words; none may be flagged.
PARAPHRASES = {
    "en-extractive": ("en", "For adults, prescribe amoxicillin 500 mg three times a day for 5 "
                      "days [1]."),
    "en-grams": ("en", "Amoxicillin 0.5 g, 3 times a day, for five days [1]."),
    "en-reordered": ("en", "For five days, adults take amoxicillin 500 mg three times daily [1]."),
    "en-brand": ("en", "Prescribe Amoxil 500 mg three times a day for 5 days [1]."),
    "en-twice": ("en", "Adults brush 2 times a day with a 1350-1500 ppm fluoride toothpaste [1]."),
    "en-one-day": ("en", "Do not rinse the mouth for 1 day after an extraction [1]."),
    "en-negation-kept": ("en", "The mouth should not be rinsed for 24 hours after an extraction "
                         "[1]."),
    "en-tooth": ("en", "38 is the third molar on the lower left [1]."),
    "en-no-details": ("en", "Brushing is important [1]."),
    "fr-extractive": ("fr", "Chez l'adulte, prescrire de l'amoxicilline 500 mg trois fois par "
                      "jour pendant 5 jours [1]."),
    "fr-grammes": ("fr", "Amoxicilline 0,5 g, 3 fois par jour, pendant cinq jours [1]."),
    "fr-deux-fois": ("fr", "Un dentifrice à 1450 ppm de fluor, 2 fois par jour [1]."),
    "fr-un-jour": ("fr", "Ne pas rincer la bouche pendant 1 jour après une extraction [1]."),
    "fr-negation-kept": ("fr", "Il ne faut pas rincer la bouche pendant 24 heures après une "
                         "extraction [1]."),
    "fr-dent": ("fr", "La 38 est la troisième molaire inférieure gauche [1]."),
}  # fmt: skip


def _question(lang: str) -> str:
    return FR_Q if lang == "fr" else EN_Q


@pytest.mark.parametrize("case", list(WRONG))
def test_one_wrong_detail_is_flagged(case: str) -> None:
    lang, answer, kind = WRONG[case]
    result = check(answer, [SOURCES[lang]], _question(lang), "withhold")
    assert result.status == "unsupported"
    assert result.action == "withheld"
    assert {d.kind for d in result.unsupported} == {kind}


@pytest.mark.parametrize("case", list(PARAPHRASES))
def test_correct_answer_in_other_words_passes(case: str) -> None:
    lang, answer = PARAPHRASES[case]
    result = check(answer, [SOURCES[lang]], _question(lang), "withhold")
    assert result.status in ("supported", "no-details"), result.payload()["unsupported"]
    assert result.action == "none"


def test_flag_policy_and_payload_name_the_detail_and_its_source() -> None:
    result = check("Use a toothpaste with 500 to 1280 ppm fluoride [1].", [EN_SOURCE], EN_Q, "flag")
    assert result.action == "flagged"
    payload = result.payload()
    assert payload["status"] == "unsupported"
    assert "1280" in [u["detail"] for u in payload["unsupported"]]
    assert all(u["sentence"].startswith("Use a toothpaste") for u in payload["unsupported"])
    supported = {s["detail"]: s for s in payload["supported"]}
    assert supported["fluoride"]["source"] == 1
    assert "1350 to 1500 ppm fluoride" in supported["fluoride"]["evidence"]


def test_details_repeated_from_the_question_are_supported() -> None:
    result = check(
        "A 20 kg child may receive 300 mg per dose [1].",
        ["A child may receive 15 mg/kg per dose, that is 300 mg per dose."],
        "How much for a 20 kg child?",
        "withhold",
    )
    assert result.status == "supported"
    assert {d.source for d in result.details if d.value == "20 kg"} == {0}


def test_detail_found_in_another_source_than_the_cited_one() -> None:
    result = check(
        "Prescribe amoxicillin 500 mg [2].", ["Amoxicillin 500 mg.", "Tooth 38."], EN_Q, "flag"
    )
    assert result.status == "supported"
    assert {d.source for d in result.details} == {1}


# -- what the current checker gets wrong (see the report in bench/results/faithfulness.md) --

SWAP = "the wrong value is elsewhere in the sources"
ENUMERATION = (
    "the source sentence names both sides in clauses the answer's clause does not map to "
    "(scientific prose: 'for right hips as …, for left hips …')"
)
MISSED = {
    "en-unknown-drug": (
        "Ceftriaxon 50 mg/kg orally, without exceeding the adult dose [1].",
        ["For children, give amoxicillin 50 mg/kg orally, without exceeding the adult dose."],
        "a drug outside the guard's list and suffixes is not a detail (a real answer of the "
        "local model)",
    ),
    "en-negation-short-sentence": (
        "You can smoke during these 48 hours [1].",
        ["Do not smoke for at least 48 hours."],
        "fewer than 3 content words shared: the sentences are never aligned",
    ),
}
FALSELY_FLAGGED = {
    "fr-par-kilo": (
        "Pas plus de 7 mg d'articaïne par kilo [1].",
        ["La dose maximale d'articaïne est de 7 mg/kg."],
        "'par kilo' is a per-kg unit (GUARD_VERSION 2) but here the drug's name stands "
        "between the dose and it: 7 mg instead of 7 mg/kg",
    ),
    "en-per-dose": (
        "A child may receive 300 mg per dose [1].",
        ["A child may receive 15 mg/kg, that is 300 mg."],
        "'300 mg per dose' is 300 mg/dose, a unit apart from the source's 300 mg",
    ),
    "en-once-single-dose": (
        "Amoxicillin 2 g by mouth, once, 30 to 60 minutes before [1].",
        ["Give amoxicillin 2 g orally as a single dose 30 to 60 minutes before the procedure."],
        "'once' is 1 x; 'a single dose' is not read as 1 x",
    ),
}


@pytest.mark.parametrize(
    "case",
    [pytest.param(k, marks=pytest.mark.xfail(strict=True, reason=v[2])) for k, v in MISSED.items()],
)
def test_known_miss(case: str) -> None:
    answer, passages, _ = MISSED[case]
    assert check(answer, passages, "", "withhold").status == "unsupported"


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(k, marks=pytest.mark.xfail(strict=True, reason=v[2]))
        for k, v in FALSELY_FLAGGED.items()
    ],
)
def test_known_false_flag(case: str) -> None:
    answer, passages, _ = FALSELY_FLAGGED[case]
    result = check(answer, passages, "", "withhold")
    assert result.status != "unsupported", result.payload()["unsupported"]


# Once missed or falsely flagged, now right: details are bound to the source sentence that
# states most of them together, and "not more than" reads as a maximum (see verification.py).
CAUGHT = {
    "en-negation-non-infected": (
        "Prophylaxis is needed for an injection through non-infected tissue [1].",
        ["Prophylaxis is not needed for an injection through non-infected tissue."],
        "'non-infected' counts as a negation; polarity is compared as a boolean, not a count",
    ),
    "en-bare-number-answer": (
        "10.",
        ["Tooth 48 is the lower right third molar."],
        "an answer that is only a number ('10.', as the local model gives) is dropped as a "
        "list marker (_MARKER_ONLY): nothing is checked",
    ),
    "en-frequency-copied": (
        "Adults should brush three times a day with a 1350 to 1500 ppm fluoride toothpaste [1].",
        [EN_SOURCE],
        SWAP,
    ),
    "en-side-copied": (
        "Tooth 38 is the lower right third molar [1].",
        ["Tooth 38 is the lower left third molar. Tooth 46 is the lower right first molar."],
        SWAP,
    ),
    "fr-dose-copied": (
        "Pour l'enfant, la dose est de 1000 mg [1].",
        ["Pour l'enfant, la dose est de 500 mg. Pour l'adulte, la dose est de 1000 mg."],
        SWAP,
    ),
}
PASSING = {
    "en-not-more-than": (
        "Give 15 mg/kg every 6 hours, not more than 60 mg/kg a day [1].",
        ["Give 15 mg/kg every 6 hours, with a maximum of 60 mg/kg per day."],
        "'not more than' (a maximum) counts as a negation",
    ),
    "fr-sans-depasser": (
        "Paracétamol : 1 g toutes les 6 heures, au maximum 4 g par jour [1].",
        ["Le paracétamol se prend à 1 g toutes les 6 heures, sans dépasser 4 g par jour."],
        "'sans dépasser' (a maximum) counts as a negation",
    ),
}


# Falsely flagged under GUARD_VERSION 1, read right since version 2 (cache/guard.py).
WORDING_READ = {
    "en-half-an-hour": (
        "Bite on the gauze for half an hour [1].",
        ["Bite on the gauze for 30 minutes."],
        "'half an hour' was read as 0.5 year ('an' is French for year)",
    ),
    "fr-adrenalinee": (
        "Lidocaïne avec adrénaline : 7 mg/kg au maximum [1].",
        ["La dose maximale de lidocaïne adrénalinée est de 7 mg/kg."],
        "'adrénalinée' was not read as epinephrine",
    ),
    "fr-par-kilo-next-to-dose": (
        "Pas plus de 7 mg par kilo d'articaïne [1].",
        ["La dose maximale d'articaïne est de 7 mg/kg."],
        "'par kilo' had no per-unit: 7 mg instead of 7 mg/kg",
    ),
    "en-hour-and-a-half": (
        "Wait an hour and a half before eating [1].",
        ["Wait 90 minutes before eating."],
        "'an hour and a half' was 1 year and a half",
    ),
}


@pytest.mark.parametrize("case", list(WORDING_READ))
def test_wordings_of_time_dose_and_drug_are_read(case: str) -> None:
    answer, passages, _ = WORDING_READ[case]
    result = check(answer, passages, "", "withhold")
    assert result.status != "unsupported", result.payload()["unsupported"]


def test_half_an_hour_is_not_a_year_and_differs_from_an_hour() -> None:
    assert check("Bite for half an hour [1].", ["Bite for 1 hour."], "", "withhold").status == (
        "unsupported"
    )


@pytest.mark.parametrize("case", list(CAUGHT))
def test_details_copied_from_another_statement_are_caught(case: str) -> None:
    answer, passages, _ = CAUGHT[case]
    assert check(answer, passages, "", "withhold").status == "unsupported"


@pytest.mark.parametrize("case", list(PASSING))
def test_a_maximum_said_with_a_negation_word_passes(case: str) -> None:
    answer, passages, _ = PASSING[case]
    result = check(answer, passages, "", "withhold")
    assert result.status != "unsupported", result.payload()["unsupported"]


# -- the triple set: the targets of issue #18 ------------------------------------------------

TRIPLES = build.all_triples()

# Wrong answers the current checker lets through, each with why (bench/results/faithfulness.md).
KNOWN_MISSES: dict[str, str] = {
    "pubmedqa/26419377/side/w": ENUMERATION,
    "pubmedqa/10548670/side/w": ENUMERATION,
    "pubmedqa/8910148/side/w": ENUMERATION,
}


def _wrong_params() -> list[object]:
    params: list[object] = []
    for t in TRIPLES:
        if not t.wrong:
            continue
        reason = KNOWN_MISSES.get(t.id)
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        params.append(pytest.param(t, id=t.id, marks=marks))
    return params


def test_the_set_is_large_and_covers_every_kind_in_both_languages() -> None:
    assert len(TRIPLES) >= 100
    assert len({t.id for t in TRIPLES}) == len(TRIPLES)
    kinds = ("dose", "unit", "drug", "negation", "side", "tooth", "frequency", "duration")
    for lang in ("en", "fr"):
        mine = [t for t in TRIPLES if t.lang == lang]
        assert {t.kind for t in mine} >= {*kinds, "correct"}, lang
        assert {t.style for t in mine if not t.wrong} == {"extractive", "paraphrase"}
    assert all(t.passages and t.answer and t.question for t in TRIPLES)


@pytest.mark.parametrize("triple", _wrong_params())
def test_no_wrong_answer_passes_unflagged(triple: Any) -> None:
    result = check(triple.answer, triple.passages, triple.question, "withhold")
    assert result.status == "unsupported", triple.label


def test_at_most_ten_percent_of_correct_answers_are_flagged() -> None:
    correct = [t for t in TRIPLES if not t.wrong]
    flagged = [
        t
        for t in correct
        if check(t.answer, t.passages, t.question, "withhold").status == "unsupported"
    ]
    assert len(flagged) <= 0.10 * len(correct), [t.id for t in flagged]
    for lang in ("en", "fr"):
        mine = [t for t in correct if t.lang == lang]
        theirs = [t.id for t in flagged if t.lang == lang]
        assert len(theirs) <= 0.10 * len(mine), theirs
