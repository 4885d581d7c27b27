"""A Sumerian pipeline (POS, NER, MT) with InterpretLR attributions (sumerian_pipeline)."""
