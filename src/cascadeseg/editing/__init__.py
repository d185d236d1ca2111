"""cascadeseg.editing"""
