"""The clinical guard: a semantic cache hit is refused unless the clinical details match.

Why this module is long: most of it is vocabulary (units, drugs, sides, negations in English
and French) that the rules read as data; splitting the tables from the rules that use them
would make each harder to check against the other.

Why it exists
-------------
Sentence embeddings measure what a question is *about*, not the details that decide
its answer. With all-MiniLM-L6-v2, "What is the amoxicillin dose for a 20 kg child?"
and "... for a 30 kg child?" score 0.975; "allergic to penicillin" and "not allergic
to penicillin" score 0.993; "lower left wisdom tooth" and "lower right" score 0.983.
No similarity threshold separates those from true paraphrases (which score 0.87-1.0):
on the safety set in ``tests/cache/safety_pairs.py``, a threshold of 0.95 alone lets 15
of 51 near misses hit; with the guard, none do, down to a threshold of 0.85. The guard
closes that gap with a deterministic check.

What it compares
----------------
Each question is reduced to a *signature*: the clinically decisive details, extracted
by rules that work in English and French (accents, case and hyphens are normalised
first). A semantic hit is allowed only when the two signatures are **identical**:

``numbers``
    every number with its unit, canonicalised: doses (``500 mg``, ``0,5 g``, ``50 mg/kg``),
    weights (``20 kg``), ages and durations (``6 ans``, ``6-month-old``, ``2 weeks``),
    frequencies (``twice a day`` = ``2 x/day``, ``toutes les 6 heures``), temperatures,
    blood pressure (``160/100``), ordinals (``first-line``, ``2e``) and bare numbers, which
    covers tooth numbers (``dent 36``, ``tooth #14``) and ``type 1`` / ``type 2``. Number
    words are read as digits (``three``, ``deux``, ``once``). ``0.5 g`` and ``500 mg`` are
    *not* unified: a refused hit costs one model call, a wrong one costs far more.
``population``
    infant, child, adolescent, adult, elderly, pregnant, breastfeeding, female, male
    (``enfant``, ``nourrisson``, ``enceinte``, ``allaitement``, ``kids``, ``pregnancy``...).
``laterality``
    left/right/bilateral, upper/lower (``gauche``, ``droite``, ``haut``, ``bas``,
    ``maxillaire``, ``mandibulaire``), anterior/posterior.
``negation``
    how many negations the question carries (``not``, ``no``, ``never``, ``without``,
    ``n't``, ``sans``, ``pas``, ``jamais``, ``aucun``, ``ne ... plus``...).
``drugs``
    drug names from a compact built-in list (generic and common brand names, English
    and French spellings, mapped to one name: ``paracétamol`` = ``acetaminophen`` =
    ``Doliprane``) plus any word with a drug-class suffix (``-cillin``, ``-mycin``,
    ``-azole``, ``-pril``, ``-sartan``, ``-olol``, ``-statin``, ``-oxetine``, ``-caine``,
    ``-floxacin``, ``-cycline``, ``-xaban``, ``-parin``...).
``conditions``
    comorbidities that change the answer: renal, hepatic, cardiac, diabetes, asthma,
    epilepsy, allergy, bleeding disorders.
``qualifiers``
    timing (before/after, ``avant``/``après``), maximum/minimum, route (oral, IV, IM,
    topical...), acute/chronic, severity, what is asked about (prevention, causes,
    symptoms, side effects, contraindications, interactions) and drug actions
    (stop/start/continue).
``prefixed``
    any ``hyper-``/``hypo-`` word, so hyperthyroidism never answers hypothyroidism.

What it does not do
-------------------
It does not understand the question: it only refuses when a decisive detail differs.
Two questions with the same details but a different intent ("how to brush after an
extraction" / "how to rinse after an extraction") must still be kept apart by the
similarity threshold, which is why the default threshold stays high (0.95). The guard
errs towards refusing: a paraphrase that changes a detail's wording ("0.5 g" for
"500 mg", "aged 6" for "6 years old") is a miss, never a wrong hit.

Signatures carry :data:`GUARD_VERSION`; entries written under another version never
match, so changing these rules cannot make old entries hit wrongly.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

import orjson

GUARD_VERSION = 2
"""2: "half an hour" is 0.5 hour (was 0.5 year: "an" is French for year), "1 and a half
hours" 1.5 hour, "par kilo" a per-kg unit, "adrénalinée" epinephrine."""

CATEGORIES = (
    "numbers",
    "population",
    "laterality",
    "negation",
    "drugs",
    "conditions",
    "qualifiers",
    "prefixed",
)


# -- normalisation ------------------------------------------------------------------


_COMBINING = re.compile(r"[\u0300-\u036f]")
_DASHES = re.compile(r"[\u2010-\u2015\-_]")


def normalize_text(text: str) -> str:
    """Lowercase, strip accents, unify apostrophes/hyphens/spaces: rules see one spelling."""
    if not text.isascii():
        text = text.replace("œ", "oe").replace("Œ", "oe").replace("µ", "u").replace("μ", "u")
        text = _COMBINING.sub("", unicodedata.normalize("NFKD", text))
        text = text.replace("\u2019", "'").replace("\u2032", "'")
        text = _DASHES.sub(" ", text)
    else:
        text = text.replace("-", " ").replace("_", " ")
    return " ".join(text.lower().replace("`", "'").split())


# -- numbers and units ----------------------------------------------------------------

_UNITS: dict[str, str] = {}


def _units(canonical: str, *spellings: str) -> None:
    for spelling in spellings:
        _UNITS[spelling] = canonical


_units("mg", "mg", "milligram", "milligrams", "milligramme", "milligrammes")
_units("g", "g", "gr", "gram", "grams", "gramme", "grammes")
_units("kg", "kg", "kgs", "kilo", "kilos", "kilogram", "kilograms", "kilogramme", "kilogrammes")
_units("mcg", "mcg", "ug", "microgram", "micrograms", "microgramme", "microgrammes")
_units("ml", "ml", "cc", "milliliter", "milliliters", "millilitre", "millilitres")
_units("l", "l", "liter", "liters", "litre", "litres")
_units("iu", "iu", "ui", "unit", "units", "unite", "unites")
_units("%", "%", "percent", "pourcent", "pour cent")
_units("mmhg", "mmhg")
_units("mmol", "mmol", "mmol/l")
_units("celsius", "°c", "°", "degre", "degres", "degree", "degrees", "c")
_units("year", "year", "years", "yr", "yrs", "y", "yo", "y/o", "an", "ans", "annee", "annees")
_units("month", "month", "months", "mo", "mos", "mois")
_units("week", "week", "weeks", "wk", "wks", "semaine", "semaines", "sem")
_units("day", "day", "days", "d", "jour", "jours", "j")
_units("hour", "hour", "hours", "hr", "hrs", "h", "heure", "heures")
_units("minute", "minute", "minutes", "min", "mins", "mn")
_units("second", "second", "seconds", "sec", "secs", "seconde", "secondes")
_units("x", "x", "time", "times", "fois")
_units("tablet", "tablet", "tablets", "tab", "tabs", "pill", "pills", "capsule", "capsules")
_units("tablet", "comprime", "comprimes", "gelule", "gelules", "cachet", "cachets")
_units("drop", "drop", "drops", "goutte", "gouttes")
_units("puff", "puff", "puffs", "bouffee", "bouffees")
_units("cartridge", "cartridge", "cartridges", "carpule", "carpules", "cartouche", "cartouches")
_units("mm", "mm", "millimeter", "millimeters", "millimetre", "millimetres")
_units("cm", "cm", "centimeter", "centimeters", "centimetre", "centimetres")

_PER: dict[str, str] = {}
for _canonical, _spellings in {
    "kg": ("kg", "kgs", "kilo", "kilos", "kilogram", "kilogramme"),
    "day": ("day", "d", "j", "jour", "24h", "24 h"),
    "hour": ("hour", "h", "heure"),
    "week": ("week", "semaine", "sem"),
    "month": ("month", "mois"),
    "dose": ("dose", "prise"),
    "ml": ("ml",),
}.items():
    for _spelling in _spellings:
        _PER[_spelling] = _canonical


def _alternation(words: Iterable[str]) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_NUMBER = r"\d+(?:[.,]\d+)?"
_PER_WORD = re.compile(rf"(?:{_alternation(_PER)})(?![a-z0-9])")
_QUANTITY = re.compile(
    rf"(?<![\d.,])(?P<num>{_NUMBER})(?:\s*/\s*(?P<den>{_NUMBER}))?"
    rf"(?:\s*(?P<unit>{_alternation(_UNITS)})(?![a-z0-9])"
    rf"(?P<per>(?:\s*(?:/|per|par|a|an|each|chaque)\s*(?:{_alternation(_PER)})(?![a-z0-9]))*))?"
    rf"(?:\s*(?P<daily>daily|quotidien|quotidiens|quotidienne|quotidiennes))?"
)
_LEFTOVER_DIGITS = re.compile(r"\d+(?:[.,]\d+)?")
_ORDINAL_DIGITS = re.compile(r"(?<![\w.,])(\d+)\s*(?:st|nd|rd|th|er|re|ere|e|eme)(?![a-z])")
_ORDINAL_WORDS = {
    "first": 1, "premier": 1, "premiere": 1, "initial": 1,
    "second": 2, "deuxieme": 2, "seconde": 2, "third": 3, "troisieme": 3,
    "fourth": 4, "quatrieme": 4, "fifth": 5, "cinquieme": 5,
}  # fmt: skip
_NUMBER_WORDS = {
    "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "fifteen": 15, "twenty": 20,
    "thirty": 30, "deux": 2, "trois": 3, "quatre": 4, "cinq": 5, "sept": 7,
    "huit": 8, "neuf": 9, "dix": 10, "onze": 11, "douze": 12, "quinze": 15, "vingt": 20,
    "trente": 30, "half": 0.5, "demi": 0.5,
}  # fmt: skip
_NUMBER_WORD_RE = re.compile(rf"\b(?:{_alternation(_NUMBER_WORDS)})\b")
_ONE_BEFORE_UNIT = re.compile(
    r"\b(?:one|un|une)\s+(?=(?:year|years|an|month|months|mois|week|weeks|semaine|day|days|"
    r"jour|hour|hours|heure|time|fois|tablet|tablets|comprime|gelule|drop|goutte|dose)\b)"
)
_TIME_WORDS = r"(?:hour|hours|day|days|minute|minutes|week|weeks|month|months|year|years)"
_HALF_AN = re.compile(rf"\bhalf\s+an?\s+(?={_TIME_WORDS}\b)")
"""'half an hour': before number words, else 'half' is 0.5 and 'an hour' reads as 0.5 year
('an' is French for year)."""
_AND_A_HALF = re.compile(
    rf"\b(?:(?P<num>\d+)|an?|one)\s+(?:and\s+a\s+half\s+(?P<unit>{_TIME_WORDS})"
    rf"|(?P<unit2>{_TIME_WORDS})\s+and\s+a\s+half)\b"
)
"""'2 and a half hours', 'an hour and a half': 2.5 hour, 1.5 hour."""
_FREQUENCY_WORDS = re.compile(r"\b(once|twice|thrice)\b")
_FREQUENCY = {"once": "1 x", "twice": "2 x", "thrice": "3 x"}


def _num(text: str) -> str:
    """Decimal commas become points; nothing else: ``1.000`` may mean one or a thousand."""
    return text.replace(",", ".")


def _extract_numbers(text: str) -> tuple[str, list[str]]:
    """Pull quantities out of ``text``; return what is left and the canonical quantities."""
    found: list[str] = []

    def ordinal(match: re.Match[str]) -> str:
        found.append(f"#{int(match.group(1))}")
        return " "

    text = _ORDINAL_DIGITS.sub(ordinal, text)
    text = _FREQUENCY_WORDS.sub(lambda m: _FREQUENCY[m.group(1)], text)
    text = _HALF_AN.sub("0.5 ", text)
    text = _AND_A_HALF.sub(
        lambda m: f"{int(m.group('num') or 1)}.5 {m.group('unit') or m.group('unit2')}", text
    )
    text = _ONE_BEFORE_UNIT.sub("1 ", text)
    text = _NUMBER_WORD_RE.sub(lambda m: f"{_NUMBER_WORDS[m.group(0)]:g}", text)

    def quantity(match: re.Match[str]) -> str:
        value = _num(match.group("num"))
        if match.group("den") is not None:
            value += "/" + _num(match.group("den"))
        unit = _UNITS.get(match.group("unit") or "", "")
        for per in _PER_WORD.findall(match.group("per") or ""):
            unit += "/" + _PER[per]
        if match.group("daily") is not None:
            unit += "/day"
        found.append(f"{value} {unit}".strip())
        return " "

    text = _QUANTITY.sub(quantity, text)
    # Safety net: a digit the patterns above did not consume still has to match.
    found.extend(_num(n) for n in _LEFTOVER_DIGITS.findall(text))
    return text, found


# -- words and phrases ------------------------------------------------------------------

_WORDS: dict[str, tuple[str, str]] = {}
_PHRASES: list[tuple[re.Pattern[str], str, str]] = []


def _vocab(category: str, canonical: str, *spellings: str) -> None:
    for spelling in spellings:
        if " " in spelling:
            _PHRASES.append((re.compile(rf"\b{re.escape(spelling)}\b"), category, canonical))
        else:
            _WORDS[spelling] = (category, canonical)


# population
_vocab("population", "infant", "infant", "infants", "baby", "babies", "newborn", "newborns")
_vocab("population", "infant", "neonate", "neonates", "neonatal", "nourrisson", "nourrissons")
_vocab("population", "infant", "bebe", "bebes", "nouveau ne", "nouveaux nes", "neonatal")
_vocab("population", "child", "child", "children", "kid", "kids", "toddler", "toddlers")
_vocab("population", "child", "pediatric", "paediatric", "paediatrics", "pediatrics")
_vocab("population", "child", "enfant", "enfants", "pediatrique", "pediatriques", "bambin")
_vocab("population", "adolescent", "adolescent", "adolescents", "teen", "teens", "teenager")
_vocab("population", "adolescent", "teenagers", "adolescente", "adolescentes", "ado", "ados")
_vocab("population", "adult", "adult", "adults", "adulte", "adultes")
_vocab("population", "elderly", "elderly", "geriatric", "senior", "seniors", "geriatrique")
_vocab("population", "elderly", "older adult", "older adults", "older people", "older patient")
_vocab("population", "elderly", "older patients", "personne agee", "personnes agees")
_vocab("population", "elderly", "sujet age", "sujets ages", "patient age", "patients ages")
_vocab("population", "pregnant", "pregnant", "pregnancy", "pregnancies", "enceinte")
_vocab("population", "pregnant", "enceintes", "grossesse", "grossesses", "gestation")
_vocab("population", "breastfeeding", "breastfeeding", "breast feeding", "lactating")
_vocab("population", "breastfeeding", "lactation", "breastfeed", "breastfed", "allaitement")
_vocab("population", "breastfeeding", "allaite", "allaiter", "allaitante", "allaitantes")
_vocab("population", "female", "woman", "women", "female", "females", "femme", "femmes")
_vocab("population", "female", "girl", "girls", "fille", "filles")
_vocab("population", "male", "man", "men", "male", "males", "homme", "hommes", "boy", "boys")
_vocab("population", "male", "garcon", "garcons")
# laterality and site
_vocab("laterality", "left", "left", "gauche", "gauches")
_vocab("laterality", "right", "right", "droite", "droit", "droites", "droits")
_vocab("laterality", "bilateral", "bilateral", "bilaterale", "bilateraux", "both sides")
_vocab("laterality", "bilateral", "des deux cotes", "deux cotes")
_vocab("laterality", "upper", "upper", "superior", "superieur", "superieure", "superieures")
_vocab("laterality", "upper", "superieurs", "haut", "maxillary", "maxillaire", "maxillaires")
_vocab("laterality", "lower", "lower", "inferior", "inferieur", "inferieure", "inferieures")
_vocab("laterality", "lower", "inferieurs", "bas", "mandibular", "mandibulaire")
_vocab("laterality", "lower", "mandibulaires")
_vocab("laterality", "anterior", "anterior", "anterieur", "anterieure", "anterieures")
_vocab("laterality", "posterior", "posterior", "posterieur", "posterieure", "posterieures")
# comorbidities
_vocab("conditions", "renal", "renal", "kidney", "kidneys", "rein", "reins", "renale")
_vocab("conditions", "renal", "renales", "nephropathy", "nephropathie", "dialysis", "dialyse")
_vocab("conditions", "hepatic", "hepatic", "liver", "foie", "hepatique", "hepatiques")
_vocab("conditions", "hepatic", "cirrhosis", "cirrhose", "hepatitis", "hepatite")
_vocab("conditions", "cardiac", "cardiac", "heart", "coeur", "cardiaque", "cardiaques")
_vocab("conditions", "diabetes", "diabetes", "diabetic", "diabetics", "diabete")
_vocab("conditions", "diabetes", "diabetique", "diabetiques")
_vocab("conditions", "asthma", "asthma", "asthmatic", "asthme", "asthmatique")
_vocab("conditions", "epilepsy", "epilepsy", "epileptic", "epilepsie", "epileptique")
_vocab("conditions", "allergy", "allergy", "allergies", "allergic", "allergie")
_vocab("conditions", "allergy", "allergique", "allergiques")
_vocab("conditions", "bleeding_disorder", "hemophilia", "hemophilie", "anticoagulated")
_vocab("conditions", "bleeding_disorder", "anticoagule", "anticoagulee", "anticoagules")
# qualifiers
_vocab("qualifiers", "before", "before", "prior", "preoperative", "pre op", "avant")
_vocab("qualifiers", "before", "preoperatoire")
_vocab("qualifiers", "after", "after", "postoperative", "post op", "apres", "postoperatoire")
_vocab("qualifiers", "maximum", "maximum", "max", "maximal", "maximale", "maximales")
_vocab("qualifiers", "maximum", "maximaux", "highest")
_vocab("qualifiers", "minimum", "minimum", "minimal", "minimale", "minimales", "lowest")
_vocab("qualifiers", "oral", "oral", "orally", "orale", "by mouth", "per os", "po")
_vocab("qualifiers", "iv", "iv", "intravenous", "intravenously", "intraveineuse", "ivd")
_vocab("qualifiers", "iv", "intraveineux", "perfusion", "infusion")
_vocab("qualifiers", "im", "intramuscular", "intramuscularly", "intramusculaire")
_vocab("qualifiers", "topical", "topical", "topically", "topique", "cutaneous", "cutane")
_vocab("qualifiers", "topical", "cutanee", "gel", "cream", "creme", "ointment", "pommade")
_vocab("qualifiers", "subcutaneous", "subcutaneous", "sous cutane", "sous cutanee")
_vocab("qualifiers", "sublingual", "sublingual", "sublinguale")
_vocab("qualifiers", "inhaled", "inhaled", "inhaler", "inhale", "inhalation")
_vocab("qualifiers", "acute", "acute", "aigu", "aigue", "aigus", "aigues")
_vocab("qualifiers", "chronic", "chronic", "chronique", "chroniques")
_vocab("qualifiers", "mild", "mild", "leger", "legere", "legers", "legeres")
_vocab("qualifiers", "moderate", "moderate", "modere", "moderee")
_vocab("qualifiers", "severe", "severe", "severely", "grave", "graves", "serious")
_vocab("qualifiers", "prevent", "prevent", "prevents", "prevention", "preventing")
_vocab("qualifiers", "prevent", "prevenir", "prevenu", "preventive", "preventif", "prophylaxis")
_vocab("qualifiers", "prevent", "prophylaxie", "prophylactic")
_vocab("qualifiers", "cause", "cause", "causes", "caused", "causing", "etiology", "etiologie")
_vocab("qualifiers", "symptom", "symptom", "symptoms", "symptome", "symptomes", "sign")
_vocab("qualifiers", "symptom", "signs", "signe", "signes")
_vocab("qualifiers", "adverse", "side effect", "side effects", "adverse effect")
_vocab("qualifiers", "adverse", "adverse effects", "adverse reaction", "adverse reactions")
_vocab("qualifiers", "adverse", "effet secondaire", "effets secondaires", "effet indesirable")
_vocab("qualifiers", "adverse", "effets indesirables")
_vocab("qualifiers", "contraindication", "contraindication", "contraindications")
_vocab("qualifiers", "contraindication", "contraindicated", "contra indication")
_vocab("qualifiers", "contraindication", "contra indications", "contre indication")
_vocab("qualifiers", "contraindication", "contre indications", "contre indique")
_vocab("qualifiers", "contraindication", "contre indiquee")
_vocab("qualifiers", "interaction", "interaction", "interactions", "interact", "interacts")
_vocab("qualifiers", "interaction", "interagir", "interagit")
_vocab("qualifiers", "stop", "stop", "stopping", "discontinue", "arreter", "arret")
_vocab("qualifiers", "stop", "interrompre", "suspendre", "withhold")
_vocab("qualifiers", "start", "start", "starting", "restart", "resume", "begin", "initiate")
_vocab("qualifiers", "start", "reprendre", "commencer", "debuter", "demarrer", "introduire")
_vocab("qualifiers", "continue", "continue", "continuing", "continuer", "poursuivre")
_vocab("qualifiers", "increase", "increase", "increased", "augmenter", "augmentation")
_vocab("qualifiers", "decrease", "decrease", "decreased", "reduce", "reduced", "diminuer")
_vocab("qualifiers", "decrease", "diminution", "reduire")

# drugs: canonical name <- spellings (EN, FR, brand names), accents already stripped
_DRUGS: dict[str, tuple[str, ...]] = {
    "amoxicillin": ("amoxicillin", "amoxicilline", "amoxil", "clamoxyl"),
    "amoxicillin+clavulanate": ("augmentin", "co amoxiclav", "amoxiclav"),
    "clavulanate": ("clavulanate", "clavulanic", "clavulanique"),
    "penicillin": ("penicillin", "penicilline", "penicillins", "penicillines"),
    "ampicillin": ("ampicillin", "ampicilline"),
    "azithromycin": ("azithromycin", "azithromycine", "zithromax"),
    "clarithromycin": ("clarithromycin", "clarithromycine"),
    "erythromycin": ("erythromycin", "erythromycine"),
    "clindamycin": ("clindamycin", "clindamycine", "dalacine"),
    "doxycycline": ("doxycycline",),
    "metronidazole": ("metronidazole", "flagyl", "rodogyl"),
    "spiramycin": ("spiramycin", "spiramycine"),
    "ciprofloxacin": ("ciprofloxacin", "ciprofloxacine"),
    "cefalexin": ("cefalexin", "cephalexin", "cefalexine", "cephalexine", "keflex"),
    "ibuprofen": ("ibuprofen", "ibuprofene", "advil", "nurofen", "motrin", "brufen"),
    "paracetamol": (
        "paracetamol",
        "acetaminophen",
        "doliprane",
        "dafalgan",
        "efferalgan",
        "tylenol",
    ),
    "aspirin": (
        "aspirin",
        "aspirine",
        "acetylsalicylic",
        "acetylsalicylique",
        "kardegic",
        "aspegic",
    ),
    "naproxen": ("naproxen", "naproxene"),
    "diclofenac": ("diclofenac", "voltaren", "voltarene"),
    "ketoprofen": ("ketoprofen", "ketoprofene", "profenid"),
    "celecoxib": ("celecoxib", "celebrex"),
    "codeine": ("codeine",),
    "tramadol": ("tramadol",),
    "morphine": ("morphine",),
    "oxycodone": ("oxycodone",),
    "nefopam": ("nefopam", "acupan"),
    "lidocaine": ("lidocaine", "lignocaine", "xylocaine"),
    "articaine": ("articaine", "septanest", "ubistesin"),
    "mepivacaine": ("mepivacaine", "scandonest", "carbocaine"),
    "prilocaine": ("prilocaine",),
    "bupivacaine": ("bupivacaine",),
    "epinephrine": ("epinephrine", "adrenaline", "epinephrin", "adrenalinee", "adrenalinees"),
    "warfarin": ("warfarin", "warfarine", "coumadin", "coumadine"),
    "fluindione": ("fluindione", "previscan"),
    "acenocoumarol": ("acenocoumarol", "sintrom"),
    "apixaban": ("apixaban", "eliquis"),
    "rivaroxaban": ("rivaroxaban", "xarelto"),
    "dabigatran": ("dabigatran", "pradaxa"),
    "heparin": ("heparin", "heparine"),
    "enoxaparin": ("enoxaparin", "enoxaparine", "lovenox"),
    "clopidogrel": ("clopidogrel", "plavix"),
    "metformin": ("metformin", "metformine", "glucophage"),
    "insulin": ("insulin", "insuline"),
    "amlodipine": ("amlodipine",),
    "lisinopril": ("lisinopril",),
    "ramipril": ("ramipril",),
    "losartan": ("losartan",),
    "atenolol": ("atenolol",),
    "bisoprolol": ("bisoprolol",),
    "propranolol": ("propranolol",),
    "atorvastatin": ("atorvastatin", "atorvastatine"),
    "simvastatin": ("simvastatin", "simvastatine"),
    "omeprazole": ("omeprazole",),
    "esomeprazole": ("esomeprazole",),
    "pantoprazole": ("pantoprazole",),
    "levothyroxine": ("levothyroxine", "levothyrox", "thyroxine"),
    "prednisone": ("prednisone", "cortancyl"),
    "prednisolone": ("prednisolone", "solupred"),
    "dexamethasone": ("dexamethasone",),
    "hydrocortisone": ("hydrocortisone",),
    "methylprednisolone": ("methylprednisolone", "medrol", "solumedrol"),
    "methotrexate": ("methotrexate",),
    "alendronate": ("alendronate", "alendronic", "alendronique", "fosamax"),
    "zoledronate": ("zoledronate", "zoledronic", "zoledronique"),
    "denosumab": ("denosumab", "prolia", "xgeva"),
    "fluoxetine": ("fluoxetine", "prozac"),
    "sertraline": ("sertraline", "zoloft"),
    "citalopram": ("citalopram",),
    "escitalopram": ("escitalopram", "seroplex"),
    "diazepam": ("diazepam", "valium"),
    "alprazolam": ("alprazolam", "xanax"),
    "lorazepam": ("lorazepam",),
    "midazolam": ("midazolam",),
    "hydroxyzine": ("hydroxyzine", "atarax"),
    "chlorhexidine": ("chlorhexidine", "eludril", "paroex"),
    "ondansetron": ("ondansetron",),
    "salbutamol": ("salbutamol", "albuterol", "ventolin", "ventoline"),
    "fluconazole": ("fluconazole",),
    "miconazole": ("miconazole",),
    "nystatin": ("nystatin", "nystatine", "mycostatine"),
    "aciclovir": ("aciclovir", "acyclovir", "zovirax"),
    "valaciclovir": ("valaciclovir", "valacyclovir", "zelitrex", "valtrex"),
    "oseltamivir": ("oseltamivir", "tamiflu"),
    "cetirizine": ("cetirizine",),
    "loratadine": ("loratadine",),
    "nitrous oxide": ("nitrous oxide", "protoxyde d'azote", "meopa"),
    "furosemide": ("furosemide", "lasilix", "lasix"),
    "hydrochlorothiazide": ("hydrochlorothiazide",),
    "spironolactone": ("spironolactone",),
    "digoxin": ("digoxin", "digoxine"),
    "allopurinol": ("allopurinol",),
    "sildenafil": ("sildenafil", "viagra"),
    "tranexamic acid": ("tranexamic", "tranexamique", "exacyl"),
    "fluoride": ("fluoride", "fluorure", "fluor", "fluore", "fluoree"),
    "vitamin k": ("vitamin k", "vitamine k"),
}
for _name, _spellings in _DRUGS.items():
    for _spelling in _spellings:
        _vocab("drugs", _name, _spelling)

_DRUG_SUFFIX = re.compile(
    r"^[a-z]{3,}(?:cillin|cilline|mycin|mycine|azole|pril|sartan|olol|statin|statine|oxetine"
    r"|caine|floxacin|floxacine|cycline|parin|parine|xaban|gatran|dronate|gliptin|gliptine"
    r"|triptan|azepam|azolam|profen|profene|dipine|setron|formin|formine|tidine|thiazide"
    r"|coxib|conazole)$"
)
_NOT_DRUGS = frozenset({"april", "avril"})

_NEGATION = re.compile(
    r"\b(?:not|no|never|without|none|nor|neither|cannot|nothing|nobody|pas|jamais|sans"
    r"|aucun|aucune|rien|ni|non|nullement)\b|n't\b|\bn(?:e\s+|')\s*\w+\s+plus\b"
)
_WORD = re.compile(r"[a-z]+")


# -- signatures ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Signature:
    """The clinically decisive details of one question; equal signatures may share answers."""

    numbers: tuple[str, ...]
    population: tuple[str, ...]
    laterality: tuple[str, ...]
    negation: tuple[str, ...]
    drugs: tuple[str, ...]
    conditions: tuple[str, ...]
    qualifiers: tuple[str, ...]
    prefixed: tuple[str, ...]

    def encode(self) -> bytes:
        """Stable bytes, stored with each semantic entry; equality is a byte comparison."""
        return orjson.dumps([GUARD_VERSION, *(getattr(self, c) for c in CATEGORIES)])

    def differences(self, other: Signature) -> list[str]:
        out = []
        for category in CATEGORIES:
            mine, theirs = getattr(self, category), getattr(other, category)
            if mine != theirs:
                out.append(f"{category} differ: {list(mine)} vs {list(theirs)}")
        return out


def signature(question: str) -> Signature:
    """Extract the details the guard compares (see the module docstring)."""
    text = normalize_text(question)
    negations = len(_NEGATION.findall(text))
    text, numbers = _extract_numbers(text)
    found: dict[str, set[str]] = {c: set() for c in CATEGORIES}
    for pattern, category, canonical in _PHRASES:
        if pattern.search(text):
            found[category].add(canonical)
            text = pattern.sub(" ", text)
    for word in _WORD.findall(text):
        known = _WORDS.get(word)
        if known is not None:
            found[known[0]].add(known[1])
        elif len(word) >= 8 and word.startswith(("hyper", "hypo")):
            found["prefixed"].add(word)
        elif word not in _NOT_DRUGS and _DRUG_SUFFIX.match(word):
            found["drugs"].add(_canonical_drug(word))
    if word_ord := [w for w in _WORD.findall(text) if w in _ORDINAL_WORDS]:
        numbers.extend(f"#{_ORDINAL_WORDS[w]}" for w in word_ord)
    return Signature(
        numbers=tuple(sorted(set(numbers))),
        population=tuple(sorted(found["population"])),
        laterality=tuple(sorted(found["laterality"])),
        negation=(str(negations),) if negations else (),
        drugs=tuple(sorted(found["drugs"])),
        conditions=tuple(sorted(found["conditions"])),
        qualifiers=tuple(sorted(found["qualifiers"])),
        prefixed=tuple(sorted(found["prefixed"])),
    )


def _canonical_drug(word: str) -> str:
    """French spellings of suffix-matched drugs end in -e (``amoxicilline``): drop it."""
    for suffix in ("cilline", "mycine", "statine", "floxacine", "parine", "gliptine", "formine"):
        if word.endswith(suffix):
            return word[:-1]
    if word.endswith("profene"):
        return word[:-1]
    return word


def explain_guard(q1: str, q2: str) -> tuple[bool, str]:
    """Would the guard let ``q2``'s cached answer serve ``q1``? And why (or why not).

    The reason names the differing details, so it contains question content: show it to
    an operator debugging the cache, never write it to the logs.
    """
    differences = signature(q1).differences(signature(q2))
    if differences:
        return False, "; ".join(differences)
    return True, "same clinical details"
