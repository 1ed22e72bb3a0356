"""The per-instance view with a stubbed Nova (there is no Nova in the test
cloud): the Port Forwards tab registered on the instance detail page, the
forwards it shows, the overview's forwarded addresses, and the create form's
instance choice. Navigator itself is the stub HTTP API of ``support``."""

import types
import unittest
from unittest import mock

from tests import support

from django.conf import settings  # noqa: E402
from django.template import Template  # noqa: E402
from django.template.loader import render_to_string  # noqa: E402

from navigator_horizon import overview  # noqa: E402
from navigator_horizon.port_forwards import forms as pf_forms  # noqa: E402
from navigator_horizon.port_forwards import tabs as pf_tabs  # noqa: E402

INSTANCE_TABS = 'openstack_dashboard.dashboards.project.instances.tabs.InstanceDetailTabs'


class NovaStub(object):
    """Patches Horizon's nova.server_list to return ``servers``."""

    def __init__(self, servers):
        self.patch = mock.patch('openstack_dashboard.api.nova.server_list',
                                return_value=(servers, False))

    def __enter__(self):
        return self.patch.__enter__()

    def __exit__(self, *exc):
        return self.patch.__exit__(*exc)


class InstanceViewTest(unittest.TestCase):
    def setUp(self):
        self.stub = support.StubNavigator()
        self.stub.routes[('GET', '/v1/forwards')] = (200, {'forwards': [
            support.forward(id='by-ip', internal_ip_address='10.0.0.5'),
            support.forward(id='by-id', instance_id='i-1',
                            internal_ip_address='10.9.9.9', external_port=20001),
            support.forward(id='other', internal_ip_address='10.0.0.99',
                            external_port=20002),
        ], 'forwards_links': []})
        self.request = support.request(self.stub.url)
        self.server = support.server()

    def tearDown(self):
        self.stub.close()

    def tab_group(self):
        return types.SimpleNamespace(kwargs={'instance': self.server},
                                     get_id=lambda: 'instance_details')

    def test_the_enabled_file_adds_the_tab_to_the_instance_page(self):
        extra = settings.HORIZON_CONFIG['extra_tabs'][INSTANCE_TABS]
        self.assertIn('navigator_horizon.port_forwards.tabs.PortForwardsTab',
                      [name for _priority, name in extra] if extra and isinstance(extra[0], tuple)
                      else extra)

    def test_tab_lists_the_instances_forwards_by_id_and_fixed_address(self):
        tab = pf_tabs.PortForwardsTab(self.tab_group(), self.request)
        self.assertTrue(tab.allowed(self.request))
        forwards = tab.get_instance_port_forwards_data()
        self.assertEqual(['by-ip', 'by-id'], [f.id for f in forwards])
        self.assertEqual(['web', 'web'], [f.instance_name for f in forwards])

    def test_tab_table_has_link_actions_only(self):
        # Horizon's instance page does not accept table POSTs (deletes).
        tab = pf_tabs.PortForwardsTab(self.tab_group(), self.request)
        tab.load_table_data()
        table = tab._tables['instance_port_forwards']
        self.assertEqual([], table.get_table_actions())
        by_id = [f for f in table.data if f.id == 'by-id'][0]
        actions = table.get_row_actions(by_id)
        self.assertEqual(['retarget'], [a.name for a in actions])
        self.assertEqual('/project/port_forwards/by-id/retarget/',
                         actions[0].get_link_url(by_id))
        self.assertEqual('203.0.113.5:20001', table.get_object_display(by_id))

    def test_tab_hidden_without_navigator_in_the_region(self):
        request = support.request(self.stub.url, current_region='Elsewhere2')
        tab = pf_tabs.PortForwardsTab(self.tab_group(), request)
        self.assertFalse(tab.allowed(request))

    def test_overview_shows_forwarded_addresses(self):
        from openstack_dashboard.dashboards.project.instances import tabs
        self.assertEqual(overview.TEMPLATE, tabs.OverviewTab.template_name)
        self.server.image = {'id': 'img', 'name': 'debian'}
        self.server.volumes = []
        tab = tabs.OverviewTab(self.tab_group(), self.request)
        context = tab.get_context_data(self.request)
        self.assertEqual(['by-ip', 'by-id'], [f.id for f in context['navigator_forwards']])
        self.assertEqual('project/instances/_detail_overview.html',
                         context['navigator_original_template'])
        context['navigator_original_template'] = Template('HORIZON-OVERVIEW')
        html = render_to_string(overview.TEMPLATE, context)
        self.assertIn('HORIZON-OVERVIEW', html)
        self.assertIn('203.0.113.5:20000', html)
        self.assertIn('203.0.113.5:20001', html)
        self.assertNotIn('20002', html)

    def test_overview_survives_navigator_down(self):
        self.stub.close()
        self.assertIsNone(overview.overview_forwards(self.request, self.server))
        self.stub = support.StubNavigator()

    def test_create_form_offers_instances_and_uses_their_fixed_address(self):
        self.stub.routes[('POST', '/v1/forwards')] = (201, {'forward': support.forward()})
        with NovaStub([self.server]):
            form = pf_forms.CreateForm(self.request, data={
                'instance_id': 'i-1', 'internal_port': '22', 'protocol': 'tcp'})
            self.assertIn(('i-1', 'web (10.0.0.5)'), list(form.fields['instance_id'].choices))
            self.assertTrue(form.is_valid(), form.errors)
            self.assertTrue(form.handle(self.request, form.cleaned_data))
        sent = self.stub.requests[-1][3]['forward']
        self.assertEqual('10.0.0.5', sent['internal_ip_address'])
        self.assertEqual('i-1', sent['instance_id'])

    def test_create_form_without_nova_takes_a_plain_ip(self):
        request = support.request(self.stub.url, compute=False)
        form = pf_forms.CreateForm(request, data={'internal_port': '22', 'protocol': 'tcp'})
        self.assertNotIn('instance_id', form.fields)
        self.assertFalse(form.is_valid())
        self.assertIn('internal_ip_address', form.errors)

    def test_api_field_error_lands_on_the_field(self):
        self.stub.routes[('POST', '/v1/forwards')] = (400, {'error': {
            'code': 400, 'title': 'Bad Request',
            'message': 'invalid internal_ip_address: "169.254.169.254" is link-local'}})
        request = support.request(self.stub.url, compute=False)
        form = pf_forms.CreateForm(request, data={
            'internal_ip_address': '169.254.169.254', 'internal_port': '80', 'protocol': 'tcp'})
        self.assertTrue(form.is_valid(), form.errors)
        self.assertFalse(form.handle(request, form.cleaned_data))
        self.assertEqual(['"169.254.169.254" is link-local'], form.errors['internal_ip_address'])


if __name__ == '__main__':
    unittest.main()
