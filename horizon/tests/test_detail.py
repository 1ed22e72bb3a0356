"""A forward's detail page: its usage as the API's show returns it, or why
there is none, with byte counts in units for people."""

import unittest
from unittest import mock

from tests import support

from django.template.loader import render_to_string  # noqa: E402
from django.urls import reverse  # noqa: E402

from navigator_horizon import api  # noqa: E402
from navigator_horizon.port_forwards import tables as pf_tables  # noqa: E402
from navigator_horizon.port_forwards import views as pf_views  # noqa: E402

USAGE = {'bytes_in': 1536, 'bytes_out': 5 * 1024 ** 3, 'connections_total': 12,
         'connections_active': 2, 'last_connection_at': '2026-11-25T01:02:03Z'}


class DetailTest(unittest.TestCase):
    def setUp(self):
        self.stub = support.StubNavigator()
        self.request = support.request(self.stub.url, compute=False)

    def tearDown(self):
        self.stub.close()

    def context(self, body):
        self.stub.routes[('GET', '/v1/forwards/f-1')] = (200, {'forward': body})
        view = pf_views.DetailView()
        view.request = self.request
        view.kwargs = {'forward_id': 'f-1'}
        view.args = ()
        with mock.patch('navigator_horizon.instances.servers', return_value=[]):
            return view.get_context_data(forward_id='f-1')

    def test_show_parses_usage_and_lists_do_not_carry_it(self):
        forward = api.PortForward(support.forward(usage=USAGE))
        self.assertEqual(USAGE, forward.usage)
        self.assertIsNone(forward.usage_unavailable)
        self.assertIsNone(api.PortForward(support.forward()).usage)

    def test_detail_page_shows_usage_with_units(self):
        context = self.context(support.forward(usage=USAGE))
        html = render_to_string('navigator_horizon/port_forwards/_detail.html', context)
        self.assertIn('1536 (1.5 KiB)', html)
        self.assertIn('5368709120 (5.0 GiB)', html)
        self.assertIn('<dd>12</dd>', html)
        self.assertIn('2026-11-25T01:02:03Z', html)
        self.assertIn('203.0.113.5:20000', html)
        self.assertNotIn('port-forward-usage-unavailable', html)

    def test_detail_page_says_why_there_is_no_usage(self):
        context = self.context(support.forward(
            usage=None, usage_unavailable='the agent on proxy-1 did not answer within 2s'))
        html = render_to_string('navigator_horizon/port_forwards/_detail.html', context)
        self.assertIn('No usage: the agent on proxy-1 did not answer within 2s', html)
        self.assertNotIn('Bytes In', html)

    def test_human_bytes(self):
        self.assertEqual('-', api.human_bytes(None))
        self.assertEqual('1023', api.human_bytes(1023))
        self.assertEqual('1024 (1.0 KiB)', api.human_bytes(1024))

    def test_the_table_links_each_forward_to_its_detail_page(self):
        self.assertEqual('/project/port_forwards/f-1/',
                         reverse('horizon:project:port_forwards:detail', args=('f-1',)))
        column = pf_tables.PortForwardsTable.base_columns['external']
        self.assertEqual('horizon:project:port_forwards:detail', column.link)


if __name__ == '__main__':
    unittest.main()
