"""Mutation testing of the privacy-critical code over a curated list of mutants (``mutants.toml``).

Run ``python -m tests.privacy.mutation --report tests/privacy/MUTATION.md``
before merging a change to ``engine/``; see ``tests/privacy/MUTATION.md``.
"""
