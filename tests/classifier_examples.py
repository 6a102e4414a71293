"""Labelled requests for the complexity classifier: (text, is_complex). EN and FR."""

EXAMPLES: list[tuple[str, bool]] = [
    # simple: practice information, routine questions
    ("What are your opening hours on Saturday?", False),
    ("Quels sont vos horaires d'ouverture le samedi ?", False),
    ("How much does a scale and polish cost?", False),
    ("Combien coûte un détartrage ?", False),
    ("Can I book an appointment for next Tuesday?", False),
    ("Je voudrais prendre rendez-vous mardi prochain.", False),
    ("Where can I park near the clinic?", False),
    ("Où puis-je me garer près du cabinet ?", False),
    ("What is your phone number?", False),
    ("Do you accept the carte vitale?", False),
    ("How often should I brush my teeth?", False),
    ("Combien de fois par jour faut-il se brosser les dents ?", False),
    ("What is a cavity?", False),
    ("C'est quoi une carie ?", False),
    ("How long does a filling take?", False),
    ("Should I floss before or after brushing?", False),
    ("Is it normal for gums to bleed a little when flossing?", False),
    ("Qu'est-ce qu'un plombage ?", False),
    ("Can I cancel my appointment tomorrow?", False),
    ("What is the normal body temperature?", False),
    ("Qu'est-ce que l'ibuprofène ?", False),
    ("How long should I wait to eat after a filling?", False),
    ("Do you treat children?", False),
    ("What toothpaste do you recommend for sensitive teeth?", False),
    # complex: clinical reasoning, special populations, interactions, multi-step
    (
        "A 67-year-old patient on warfarin needs a tooth extraction. What are the bleeding risks "
        "and how should we manage the anticoagulation?",
        True,
    ),
    (
        "Patient de 72 ans sous anticoagulants, insuffisance rénale : quelle prise en charge pour "
        "une extraction dentaire ?",
        True,
    ),
    ("What is the differential diagnosis for a painless white lesion on the tongue?", True),
    ("Quel est le diagnostic différentiel d'une lésion blanche indolore de la langue ?", True),
    ("Can amoxicillin interact with methotrexate? What should I watch for?", True),
    ("Y a-t-il une contre-indication à associer l'ibuprofène avec un IEC ?", True),
    ("What is the amoxicillin dose for a pregnant woman with penicillin allergy history?", True),
    ("Quelle posologie d'amoxicilline chez un enfant de 20 kg avec insuffisance rénale ?", True),
    (
        "Explain step by step how to manage a dental abscess in a diabetic patient, and justify "
        "each antibiotic choice.",
        True,
    ),
    (
        "Compare the evidence for chlorhexidine versus essential oil mouthwash in periodontitis "
        "management, with guideline recommendations.",
        True,
    ),
    (
        "Explique étape par étape la prise en charge d'une péricoronarite chez une femme enceinte.",
        True,
    ),
    (
        "A patient presents with facial swelling, fever and trismus after a molar extraction. "
        "What could it be and what should we rule out?",
        True,
    ),
    ("How should local anaesthetic doses be adjusted for a child with a heart condition?", True),
    (
        "Quel est le mécanisme physiopathologique de l'ostéonécrose des mâchoires sous "
        "bisphosphonates ?",
        True,
    ),
    (
        "Write a referral letter summarising this patient's history of endocarditis and the "
        "antibiotic prophylaxis plan.",
        True,
    ),
    (
        "What are the risk-benefit considerations of dental implants in an immunocompromised "
        "patient?",
        True,
    ),
    (
        "Patient âgé de 80 ans, polymédiqué, diabétique : quels antalgiques sont possibles après "
        "une chirurgie parodontale et pourquoi ?",
        True,
    ),
    ("Can I give articaine with epinephrine to a patient on beta blockers? Why or why not?", True),
]

# Written after the cue weights were tuned on EXAMPLES, and never tuned on: an honest check.
HELD_OUT: list[tuple[str, bool]] = [
    ("Is the clinic open on bank holidays?", False),
    ("Est-ce que vous faites les blanchiments ?", False),
    ("How do I get to your office from the train station?", False),
    ("What should I bring to my first visit?", False),
    ("Puis-je payer par carte bancaire ?", False),
    ("Why do my teeth feel sensitive to cold drinks?", False),
    ("What is gum disease?", False),
    ("How long does a crown last?", False),
    (
        "A 45-year-old smoker has a non-healing ulcer on the lateral border of the tongue for "
        "three weeks. What are the possible diagnoses and next steps?",
        True,
    ),
    ("Which analgesic is safest for a breastfeeding mother after a wisdom tooth extraction?", True),
    (
        "Mon patient prend du clopidogrel et de l'aspirine : faut-il arrêter avant une pose "
        "d'implant ? Quels sont les risques ?",
        True,
    ),
    ("Compare articaine and lidocaine for inferior alveolar nerve blocks in children.", True),
    (
        "Quelle antibioprophylaxie pour un patient porteur d'une prothèse valvulaire avant "
        "un détartrage ?",
        True,
    ),
    ("Explain why bisphosphonates increase the risk of osteonecrosis after extractions.", True),
    (
        "Patient with chronic kidney disease stage 4 needs pain relief after root canal "
        "treatment: which drugs and doses?",
        True,
    ),
    (
        "Summarise the management options for a fractured incisor in an 8-year-old, including "
        "follow-up.",
        True,
    ),
]
