"""The file that enables the plugin (copy ``_1495_navigator_port_forwards.py``
into ``openstack_dashboard/local/enabled/``)."""
