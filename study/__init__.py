"""The comparison study of DCGAN, WGAN-GP, WGAN and spectral-norm critics: ``python -m study.compare``.

A script, not part of the library: it imports ``gan_modules`` and ``datamodules`` and starts
``train.py`` runs, and nothing in the library imports it.
"""
