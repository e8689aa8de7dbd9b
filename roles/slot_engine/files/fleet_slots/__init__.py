"""fleet's slot switch engine: the deploy state, the nginx slot table, and the move between slots.

Installed on every fleet host by the slot_engine role; used by its Ansible module `fleet_slot`,
the `fleet-slot` command, the local fact `fleet` and the health checker.
"""
