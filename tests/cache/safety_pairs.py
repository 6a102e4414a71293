"""Near-miss and paraphrase question pairs for the semantic cache's safety test.

``NEAR_MISSES`` must never hit: answering one question with the other's answer
would be clinically wrong (a different dose, population, side, drug, negation,
number, or a different question altogether). ``PARAPHRASES`` ask the same thing
in other words and should hit. Both lists mix English and French, because the
clinics this serves work in both.
"""

from __future__ import annotations

NEAR_MISSES: list[tuple[str, str]] = [
    # -- population, age and weight ------------------------------------------------
    (
        "What is the amoxicillin dose for a 20 kg child?",
        "What is the amoxicillin dose for an adult?",
    ),
    (
        "What is the amoxicillin dose for a 20 kg child?",
        "What is the amoxicillin dose for a 30 kg child?",
    ),
    (
        "Maximum daily dose of paracetamol for adults",
        "Maximum daily dose of paracetamol for children",
    ),
    ("Articaine dose for a 70 kg adult", "Articaine dose for a 15 kg child"),
    ("Fever of 38.5 in a 6 month old baby", "Fever of 38.5 in a 6 year old child"),
    ("Fever of 38.5 in a 6 month old baby", "Fever of 39.5 in a 6 month old baby"),
    ("Doxycycline dose for a 12 year old", "Doxycycline dose for an 8 year old"),
    (
        "Does a 2 year old need fluoride toothpaste?",
        "Does a 12 year old need fluoride toothpaste?",
    ),
    (
        "How long should a child avoid eating after a filling?",
        "How long should an adult avoid eating after a filling?",
    ),
    ("Can I take ibuprofen while pregnant?", "Can I take ibuprofen while breastfeeding?"),
    (
        "Quelle est la dose d'amoxicilline pour un enfant de 20 kg ?",
        "Quelle est la dose d'amoxicilline pour un adulte ?",
    ),
    (
        "Quelle est la dose d'amoxicilline pour un enfant de 20 kg ?",
        "Quelle est la dose d'amoxicilline pour un enfant de 25 kg ?",
    ),
    ("Fièvre à 39 chez un nourrisson de 3 mois", "Fièvre à 39 chez un enfant de 3 ans"),
    (
        "Une femme enceinte peut-elle avoir une anesthésie locale chez le dentiste ?",
        "Une femme qui allaite peut-elle avoir une anesthésie locale chez le dentiste ?",
    ),
    # -- doses, frequencies and other numbers ----------------------------------------
    (
        "Is 500 mg of amoxicillin three times a day correct?",
        "Is 875 mg of amoxicillin twice a day correct?",
    ),
    ("Is ibuprofen 400 mg every 6 hours safe?", "Is ibuprofen 400 mg every 4 hours safe?"),
    ("Is clindamycin 300 mg safe in pregnancy?", "Is clindamycin 600 mg safe in pregnancy?"),
    (
        "Blood pressure 160/100, is it safe to do a dental extraction?",
        "Blood pressure 120/80, is it safe to do a dental extraction?",
    ),
    ("Type 1 diabetes and dental implants", "Type 2 diabetes and dental implants"),
    (
        "Is bleeding normal 2 days after an extraction?",
        "Is bleeding normal 2 weeks after an extraction?",
    ),
    (
        "What is the first-line antibiotic for a dental abscess?",
        "What is the second-line antibiotic for a dental abscess?",
    ),
    (
        "Paracétamol 1 g toutes les 6 heures chez l'adulte, est-ce correct ?",
        "Paracétamol 1 g toutes les 4 heures chez l'adulte, est-ce correct ?",
    ),
    ("Diabète de type 1 et implants dentaires", "Diabète de type 2 et implants dentaires"),
    # -- laterality and tooth numbers --------------------------------------------------
    (
        "Pain in the lower left wisdom tooth after extraction",
        "Pain in the lower right wisdom tooth after extraction",
    ),
    ("Swelling of the upper right molar", "Swelling of the lower right molar"),
    (
        "Can tooth 36 be saved with a root canal?",
        "Can tooth 46 be saved with a root canal?",
    ),
    (
        "Douleur à la dent de sagesse en bas à gauche",
        "Douleur à la dent de sagesse en bas à droite",
    ),
    ("Dent 11 fracturée, que faire ?", "Dent 21 fracturée, que faire ?"),
    # -- negation ----------------------------------------------------------------------
    (
        "The patient is allergic to penicillin, can we give amoxicillin?",
        "The patient is not allergic to penicillin, can we give amoxicillin?",
    ),
    ("Should I take metformin with food?", "Should I take metformin without food?"),
    (
        "Lidocaine maximum dose with epinephrine",
        "Lidocaine maximum dose without epinephrine",
    ),
    (
        "Peut-on prescrire de l'amoxicilline à un patient allergique à la pénicilline ?",
        "Peut-on prescrire de l'amoxicilline à un patient qui n'est pas allergique "
        "à la pénicilline ?",
    ),
    ("Dose maximale de lidocaïne avec adrénaline", "Dose maximale de lidocaïne sans adrénaline"),
    (
        "Je n'ai pas de fièvre après l'extraction, est-ce normal ?",
        "J'ai de la fièvre après l'extraction, est-ce normal ?",
    ),
    # -- drug names ---------------------------------------------------------------------
    ("Can I take ibuprofen while pregnant?", "Can I take paracetamol while pregnant?"),
    (
        "Is it safe to extract a tooth on warfarin?",
        "Is it safe to extract a tooth on apixaban?",
    ),
    ("Can I drink alcohol with metronidazole?", "Can I drink alcohol with amoxicillin?"),
    ("Puis-je prendre de l'ibuprofène enceinte ?", "Puis-je prendre du paracétamol enceinte ?"),
    (
        "Posologie de la clarithromycine chez l'enfant",
        "Posologie de l'azithromycine chez l'enfant",
    ),
    # -- timing, route, organ, condition --------------------------------------------------
    (
        "Should I stop aspirin before a tooth extraction?",
        "Should I restart aspirin after a tooth extraction?",
    ),
    (
        "Faut-il arrêter l'aspirine avant une extraction dentaire ?",
        "Faut-il reprendre l'aspirine après une extraction dentaire ?",
    ),
    (
        "Oral amoxicillin dose for a dental infection",
        "Intravenous amoxicillin dose for a dental infection",
    ),
    (
        "Can a patient with kidney failure take ibuprofen?",
        "Can a patient with liver failure take ibuprofen?",
    ),
    ("Symptoms of hyperthyroidism", "Symptoms of hypothyroidism"),
    # -- same details, different question (only the similarity threshold separates them) --
    ("What are the side effects of amoxicillin?", "What are the contraindications of amoxicillin?"),
    ("How do I treat a dry socket?", "How do I prevent a dry socket?"),
    ("What causes bleeding gums?", "How do I stop bleeding gums?"),
    (
        "When can I brush my teeth after a tooth extraction?",
        "When can I rinse my mouth after a tooth extraction?",
    ),
    ("Effets secondaires de l'ibuprofène", "Contre-indications de l'ibuprofène"),
    ("Comment traiter une carie ?", "Comment prévenir une carie ?"),
    ("What is the treatment for gingivitis?", "What is the treatment for periodontitis?"),
]

PARAPHRASES: list[tuple[str, str]] = [
    # -- English -----------------------------------------------------------------------
    (
        "What is the amoxicillin dose for a 20 kg child?",
        "What amoxicillin dose should a 20 kg child get?",
    ),
    ("Can I take ibuprofen while pregnant?", "Can I take ibuprofen during pregnancy?"),
    ("What are the side effects of amoxicillin?", "What side effects does amoxicillin have?"),
    ("How long does a root canal take?", "How long does a root canal treatment take?"),
    ("What causes tooth sensitivity?", "What are the causes of tooth sensitivity?"),
    ("How do I treat a dry socket?", "How can I treat a dry socket?"),
    (
        "What is the maximum daily dose of paracetamol for adults?",
        "What is the maximum daily paracetamol dose for an adult?",
    ),
    ("When can I eat after a tooth extraction?", "When can I eat after having a tooth extracted?"),
    (
        "Is it normal for gums to bleed when brushing?",
        "Is it normal for my gums to bleed when I brush?",
    ),
    ("What is a dental implant?", "What are dental implants?"),
    ("How often should I replace my toothbrush?", "How often should a toothbrush be replaced?"),
    (
        "What are the symptoms of a dental abscess?",
        "What are the symptoms of an abscess in a tooth?",
    ),
    (
        "What is the maximum dose of lidocaine with epinephrine?",
        "What is the lidocaine maximum dose with epinephrine?",
    ),
    (
        "How long does numbness last after local anesthesia?",
        "How long does the numbness from local anesthesia last?",
    ),
    (
        "Why do my teeth hurt when I drink cold water?",
        "Why do my teeth hurt when drinking cold water?",
    ),
    (
        "Can I drink alcohol while taking metronidazole?",
        "Is it safe to drink alcohol while taking metronidazole?",
    ),
    (
        "What foods should I avoid after a tooth extraction?",
        "Which foods should I avoid after a tooth extraction?",
    ),
    ("How is a cavity treated?", "How do you treat a cavity?"),
    ("what is a dental implant", "What is a dental implant?"),
    ("How to stop bleeding gums", "How can I stop my gums from bleeding?"),
    ("Is fluoride toothpaste safe for children?", "Is fluoride toothpaste safe for kids?"),
    # -- French ------------------------------------------------------------------------
    (
        "Quelle est la dose d'amoxicilline pour un enfant de 20 kg ?",
        "Quelle dose d'amoxicilline pour un enfant de 20 kg ?",
    ),
    (
        "Combien de temps dure un traitement de canal ?",
        "Combien de temps dure un traitement de canal dentaire ?",
    ),
    (
        "Quels sont les effets secondaires de l'ibuprofène ?",
        "Quels sont les effets indésirables de l'ibuprofène ?",
    ),
    (
        "Que manger après une extraction dentaire ?",
        "Que puis-je manger après une extraction dentaire ?",
    ),
    ("Pourquoi mes gencives saignent-elles ?", "Pourquoi est-ce que mes gencives saignent ?"),
    ("Comment soigner une carie ?", "Comment soigner une carie dentaire ?"),
    (
        "Est-ce que je peux prendre de l'ibuprofène enceinte ?",
        "Puis-je prendre de l'ibuprofène enceinte ?",
    ),
    (
        "Quelle est la dose maximale de paracétamol par jour chez l'adulte ?",
        "Quelle est la dose maximale de paracétamol par jour pour un adulte ?",
    ),
    ("Qu'est-ce qu'un implant dentaire ?", "C'est quoi un implant dentaire ?"),
    ("Comment calmer une rage de dents ?", "Comment soulager une rage de dents ?"),
    (
        "À quelle fréquence faut-il changer sa brosse à dents ?",
        "À quelle fréquence faut-il changer de brosse à dents ?",
    ),
    (
        "Combien de temps dure une anesthésie dentaire ?",
        "Combien de temps dure l'anesthésie dentaire ?",
    ),
]
