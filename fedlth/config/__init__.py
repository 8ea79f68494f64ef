"""Scenarios and components: the keys, their readers, options and the registry, plug-ins."""
