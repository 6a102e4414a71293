"""Synthetic medical-abstract passages: distractors for PubMedQA and corpora for scale runs.

Two kinds, both deterministic for a given seed:

* ``hard``: each passage is a study-abstract template filled with key terms taken from
  three *different* PubMedQA abstracts (their top tf-idf words and bigrams), so it
  shares vocabulary with several questions yet answers none of them. These are hard
  negatives for lexical matching.
* ``generic``: the same templates filled from hand-written lists of conditions,
  interventions and outcomes plus a long tail of pseudo drug and gene names drawn with a
  Zipf law, so term statistics at 1M passages look like a real corpus (a few very
  common words, a long tail of rare ones).

No PubMedQA text is copied beyond single key terms.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Iterator, Sequence

STOPWORDS = frozenset(
    """
    a about above after again against all also although am among an and any are as at be
    because been before being below between both but by can could did do does doing during
    each either few for from further had has have having he her here hers herself him
    himself his how however i if in into is it its itself just least less may me might
    more most much must my myself no nor not of off on once only or other our ours
    ourselves out over own per same she should since so some such than that the their
    theirs them themselves then there these they this those through thus to too under
    until up upon very via was we were what when where whether which while who whom why
    will with within without would yet you your yours study studies patients patient
    results result group groups using used use among compared analysis data total age
    years year aim aims objective objectives method methods background conclusion
    conclusions significant significantly respectively included including two three one
    first second higher lower mean median associated association performed found whether
    """.split()  # noqa: SIM905
)

_COND_LIST = [
    "hypertension",
    "type 2 diabetes",
    "asthma",
    "chronic obstructive pulmonary disease",
    "heart failure",
    "atrial fibrillation",
    "ischemic stroke",
    "myocardial infarction",
    "chronic kidney disease",
    "liver cirrhosis",
    "hepatitis C",
    "rheumatoid arthritis",
    "osteoarthritis",
    "osteoporosis",
    "major depression",
    "schizophrenia",
    "bipolar disorder",
    "epilepsy",
    "migraine",
    "Parkinson disease",
    "Alzheimer disease",
    "multiple sclerosis",
    "psoriasis",
    "atopic dermatitis",
    "breast cancer",
    "prostate cancer",
    "colorectal cancer",
    "lung cancer",
    "melanoma",
    "lymphoma",
    "acute leukemia",
    "sepsis",
    "pneumonia",
    "tuberculosis",
    "HIV infection",
    "urinary tract infection",
    "obesity",
    "metabolic syndrome",
    "gestational diabetes",
    "preeclampsia",
    "preterm birth",
    "neonatal jaundice",
    "bronchiolitis",
    "otitis media",
    "appendicitis",
    "cholecystitis",
    "pancreatitis",
    "Crohn disease",
    "ulcerative colitis",
    "celiac disease",
    "gastroesophageal reflux",
    "peptic ulcer",
    "anemia",
    "sickle cell disease",
    "venous thromboembolism",
    "pulmonary embolism",
    "peripheral artery disease",
    "aortic stenosis",
    "endocarditis",
    "glaucoma",
    "cataract",
    "macular degeneration",
    "diabetic retinopathy",
    "hearing loss",
    "chronic rhinosinusitis",
    "periodontitis",
    "dental caries",
    "low back pain",
    "fibromyalgia",
    "gout",
    "lupus",
    "vasculitis",
    "hypothyroidism",
    "hyperthyroidism",
    "adrenal insufficiency",
    "polycystic ovary syndrome",
    "endometriosis",
    "infertility",
    "kidney stones",
    "delirium",
    "dementia",
    "anxiety disorder",
    "insomnia",
    "obstructive sleep apnea",
    "alcohol use disorder",
    "opioid use disorder",
    "burn injury",
    "hip fracture",
    "traumatic brain injury",
]
_INTERVENTIONS = [
    "metformin",
    "insulin glargine",
    "lisinopril",
    "amlodipine",
    "atorvastatin",
    "aspirin",
    "clopidogrel",
    "warfarin",
    "apixaban",
    "heparin",
    "furosemide",
    "spironolactone",
    "metoprolol",
    "salbutamol",
    "inhaled corticosteroids",
    "prednisolone",
    "methotrexate",
    "adalimumab",
    "infliximab",
    "rituximab",
    "omeprazole",
    "amoxicillin",
    "ceftriaxone",
    "vancomycin",
    "azithromycin",
    "doxycycline",
    "ciprofloxacin",
    "sertraline",
    "fluoxetine",
    "lithium",
    "olanzapine",
    "haloperidol",
    "levetiracetam",
    "valproate",
    "levodopa",
    "donepezil",
    "morphine",
    "paracetamol",
    "ibuprofen",
    "gabapentin",
    "vitamin D",
    "calcium supplementation",
    "iron supplementation",
    "physiotherapy",
    "cognitive behavioural therapy",
    "laparoscopic surgery",
    "open surgery",
    "radiotherapy",
    "chemotherapy",
    "immunotherapy",
    "percutaneous coronary intervention",
    "bariatric surgery",
    "exercise training",
    "dietary counselling",
    "smoking cessation counselling",
    "telemonitoring",
    "nurse-led follow-up",
    "early mobilisation",
    "acupuncture",
    "mindfulness training",
    "home visits",
    "a structured education programme",
]
_OUTCOMES = [
    "all-cause mortality",
    "hospital readmission",
    "length of stay",
    "quality of life",
    "blood pressure control",
    "glycated haemoglobin",
    "pain scores",
    "functional status",
    "complication rates",
    "infection rates",
    "recurrence",
    "treatment adherence",
    "patient satisfaction",
    "healthcare costs",
    "time to recovery",
    "symptom severity",
    "cognitive performance",
    "bone mineral density",
    "renal function",
    "exercise capacity",
    "depressive symptoms",
    "sleep quality",
    "weight loss",
    "serum cholesterol",
    "adverse drug events",
    "emergency department visits",
    "survival",
    "relapse rates",
]
_POPULATIONS = [
    "adults",
    "older adults",
    "children",
    "adolescents",
    "pregnant women",
    "postmenopausal women",
    "men",
    "outpatients",
    "inpatients",
    "nursing home residents",
    "primary care patients",
    "intensive care patients",
    "veterans",
    "health care workers",
    "students",
    "infants",
]
_DESIGNS = [
    "A randomized controlled trial",
    "A prospective cohort study",
    "A retrospective cohort study",
    "A cross-sectional survey",
    "A case-control study",
    "A multicentre observational study",
    "A pilot study",
    "A registry-based study",
    "A secondary analysis of trial data",
    "A population-based study",
    "A single-centre audit",
]
_SETTINGS = [
    "a university hospital",
    "three community hospitals",
    "a tertiary referral centre",
    "general practices",
    "an urban emergency department",
    "rural clinics",
    "a national registry",
    "a paediatric hospital",
    "outpatient clinics",
    "long-term care facilities",
]

_SYLLABLES = [
    "ta",
    "zo",
    "ri",
    "lan",
    "mex",
    "vu",
    "quin",
    "dra",
    "pel",
    "sor",
    "tib",
    "cor",
    "nix",
    "lu",
    "fen",
    "gal",
    "mor",
    "bet",
    "sal",
    "vir",
    "zan",
    "pro",
    "kel",
    "dox",
]
_SUFFIXES = [
    "mab",
    "nib",
    "pril",
    "sartan",
    "olol",
    "statin",
    "azole",
    "cycline",
    "vir",
    "tide",
    "parin",
    "dronate",
    "lukast",
    "gliptin",
    "oxacin",
    "afil",
]

_TEMPLATES = [
    "{design} of {n} {population} with {c1} was conducted at {setting} to assess {o1}.",
    "The aim of this study was to evaluate the relationship between {t1} and {t2} in {population}.",
    "Participants received {i1} or {i2} for {weeks} weeks, and {o1} was recorded.",
    "{O1} was measured at baseline and after {months} months of follow-up.",
    "There was no significant difference in {t3} between the two arms (p={p}).",
    "Multivariate analysis identified {t1} as an independent predictor of {o2} "
    "(OR {orv}, 95% CI {lo}-{hi}).",
    "{T2} was more frequent in the intervention group than in controls ({pct}% vs {pct2}%).",
    "Data on {t3}, {c2} and {o2} were extracted from electronic medical records.",
    "Patients with {c1} who were treated with {i1} had lower {o2} than those receiving {i2}.",
    "Secondary end points included {o1}, {t2} and {t4}.",
    "Subgroup analyses by age, sex and {t4} were prespecified.",
    "During {months} months, {k} participants ({pct}%) developed {c2}.",
    "The prevalence of {t1} was {pct}% among {population} and {pct2}% in the reference group.",
    "Serum levels of {x} were associated with {t3} after adjustment for confounders.",
    "Treatment with {x} reduced {o2} by {pct}% compared with placebo.",
    "Logistic regression was used to examine whether {t4} modified the effect of {i2}.",
    "Sensitivity analyses excluding participants with {c2} gave similar estimates.",
    "Median follow-up was {months} months (interquartile range {lo2}-{hi2}).",
]


def _pseudo_words(rng: random.Random, count: int) -> list[str]:
    words: set[str] = set()
    while len(words) < count:
        stem = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 3)))
        words.add(
            stem + rng.choice(_SUFFIXES)
            if rng.random() < 0.7
            else stem.upper()[:4] + str(rng.randint(1, 99))
        )
    return sorted(words)


def key_terms(texts: Sequence[str], per_doc: int = 8) -> list[list[str]]:
    """Top tf-idf words and bigrams of each text: the terms a question about it would use."""
    tokenised = [[w for w in re.findall(r"[a-z][a-z0-9-]+", t.lower())] for t in texts]
    df: Counter[str] = Counter()
    grams_per_doc: list[Counter[str]] = []
    for words in tokenised:
        grams: Counter[str] = Counter()
        content = [w if (w not in STOPWORDS and len(w) > 3) else "" for w in words]
        for i, w in enumerate(content):
            if not w:
                continue
            grams[w] += 1
            if i + 1 < len(content) and content[i + 1]:
                grams[f"{w} {content[i + 1]}"] += 1
        grams_per_doc.append(grams)
        df.update(grams.keys())
    n = len(texts)
    out: list[list[str]] = []
    for grams in grams_per_doc:
        scored = sorted(grams.items(), key=lambda kv: -kv[1] * math.log(n / df[kv[0]]))
        out.append([g for g, _ in scored[:per_doc]])
    return out


class SyntheticCorpus:
    """Deterministic passage generator (see the module docstring)."""

    def __init__(
        self, seed: int = 7, term_pool: Sequence[Sequence[str]] = (), tail_size: int = 50_000
    ) -> None:
        self.seed = seed
        self.term_pool = [list(t) for t in term_pool if t]
        rng = random.Random(seed)
        self.tail = _pseudo_words(rng, tail_size)
        # Zipf weights over the tail: a few frequent names, many rare ones.
        self._tail_cum: list[float] = []
        acc = 0.0
        for r in range(1, len(self.tail) + 1):
            acc += 1.0 / r
            self._tail_cum.append(acc)

    def _tail_word(self, rng: random.Random) -> str:
        import bisect

        x = rng.random() * self._tail_cum[-1]
        return self.tail[min(bisect.bisect_left(self._tail_cum, x), len(self.tail) - 1)]

    def passage(self, i: int, kind: str = "generic", sentences: tuple[int, int] = (10, 16)) -> str:
        rng = random.Random(self.seed * 1_000_003 + i)
        if kind == "hard" and len(self.term_pool) >= 3:
            donors = rng.sample(self.term_pool, 3)
            terms = [rng.choice(d) for d in donors] + [rng.choice(rng.choice(donors))]
        else:
            terms = [
                self._tail_word(rng) if rng.random() < 0.5 else rng.choice(_OUTCOMES)
                for _ in range(4)
            ]
        fill = {
            "design": rng.choice(_DESIGNS),
            "population": rng.choice(_POPULATIONS),
            "setting": rng.choice(_SETTINGS),
            "c1": rng.choice(_COND_LIST),
            "c2": rng.choice(_COND_LIST),
            "i1": rng.choice(_INTERVENTIONS),
            "i2": rng.choice(_INTERVENTIONS),
            "o1": rng.choice(_OUTCOMES),
            "o2": rng.choice(_OUTCOMES),
            "t1": terms[0],
            "t2": terms[1],
            "t3": terms[2],
            "t4": terms[3],
            "x": self._tail_word(rng),
            "n": rng.randint(20, 5000),
            "k": rng.randint(3, 400),
            "weeks": rng.randint(2, 52),
            "months": rng.randint(3, 60),
            "p": f"0.{rng.randint(1, 99):02d}",
            "orv": f"{rng.uniform(0.3, 4):.2f}",
            "lo": f"{rng.uniform(0.1, 1):.2f}",
            "hi": f"{rng.uniform(1, 6):.2f}",
            "lo2": rng.randint(1, 12),
            "hi2": rng.randint(13, 80),
            "pct": rng.randint(2, 90),
            "pct2": rng.randint(2, 90),
        }
        fill["O1"] = str(fill["o1"]).capitalize()
        fill["T2"] = str(fill["t2"]).capitalize()
        count = rng.randint(*sentences)
        chosen = [_TEMPLATES[0], *rng.sample(_TEMPLATES[1:], min(count - 1, len(_TEMPLATES) - 1))]
        return " ".join(t.format(**fill) for t in chosen)

    def passages(self, start: int, count: int, kind: str = "generic") -> Iterator[str]:
        for i in range(start, start + count):
            yield self.passage(i, kind)
