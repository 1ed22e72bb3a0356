"""Navigator's Horizon plugin: the Project > Network > Port Forwards panel,
a Port Forwards tab on the instance detail page, and the forwarded addresses
in the instance overview.

Enable it with the single file ``navigator_horizon/enabled/_1495_navigator_port_forwards.py``
copied (or linked) into ``openstack_dashboard/local/enabled/``.
"""
