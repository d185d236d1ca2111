"""cascadeseg.training"""
