"""Which deployment answers: route policies, the complexity classifier, health and breakers."""
