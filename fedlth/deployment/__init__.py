"""Deployment: certificates, SuperNode keys, Flower connections and the `fedlth deploy` command."""
