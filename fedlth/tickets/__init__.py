"""Lottery tickets on one model: masks, pruners, IMP rules and controls, the central run, ticket files."""
