"""featmatch's trained weights (``*.pt`` with ``*.pt.sha256``), int8 calibrations and exports.

Package data of the installed package ``featmatch.models``; in the repository this is the
top-level ``models/`` folder. Looked up by :func:`featmatch.network.models_dir`.
"""
