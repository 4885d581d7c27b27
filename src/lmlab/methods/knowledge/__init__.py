"""LM-CORE and CoSe-Co: a knowledge graph, retrieval, a knowledge reader and a commonsense generator (lmcore_knowledge, coseco_commonsense)."""
