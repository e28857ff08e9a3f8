"""Hyperparameter sweeps (``cot-ray tune``): the sweep file's schema and validation (spec.py,
plain Python, checked before Ray starts), one trial as a Tune trainable (trial.py), the trials'
results (results.py), and running a sweep with Ray Tune (tune.py)."""
