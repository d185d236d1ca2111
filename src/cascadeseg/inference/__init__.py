"""cascadeseg.inference"""
