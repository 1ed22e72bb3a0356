"""Quotas in the panel: the client reads the project's quota details, and
the Create button is disabled, saying so, at a limit (as Horizon's own
quota-aware create buttons are)."""

import unittest

from tests import support

from navigator_horizon import api  # noqa: E402
from navigator_horizon.port_forwards import tables  # noqa: E402


def details(forwards, ports):
    return {'quota': {'forwards': {'limit': forwards[0], 'used': forwards[1]},
                      'ports': {'limit': ports[0], 'used': ports[1]}}}


class QuotaTest(unittest.TestCase):
    def setUp(self):
        self.stub = support.StubNavigator()
        self.request = support.request(self.stub.url)
        self.path = '/v1/quotas/project-a/details'

    def tearDown(self):
        self.stub.close()

    def action(self):
        return tables.CreatePortForward()

    def test_reads_the_users_project_quota(self):
        self.stub.routes[('GET', self.path)] = (200, details((50, 2), (1000, 4)))
        quota = api.quota_details(self.request)
        self.assertEqual({'limit': 50, 'used': 2}, quota['forwards'])
        self.assertEqual([], api.quota_full(quota))
        self.assertEqual('user-token', self.stub.requests[0][2]['X-Auth-Token'])

    def test_full_resources(self):
        quota = details((2, 2), (-1, 500))['quota']
        self.assertEqual(['forwards'], api.quota_full(quota))
        quota = details((5, 1), (4, 6))['quota']
        self.assertEqual(['ports'], api.quota_full(quota))

    def test_create_is_enabled_with_room(self):
        self.stub.routes[('GET', self.path)] = (200, details((50, 2), (-1, 4)))
        action = self.action()
        self.assertTrue(action.allowed(self.request))
        self.assertNotIn('disabled', action.classes)
        self.assertEqual('Create Port Forward', str(action.verbose_name))
        self.assertEqual('Quota: 2 of 50 forwards, 4 of unlimited ports used',
                         str(action.attrs['title']))

    def test_create_is_disabled_at_the_limit(self):
        self.stub.routes[('GET', self.path)] = (200, details((2, 2), (1000, 2)))
        action = self.action()
        self.assertTrue(action.allowed(self.request))
        self.assertIn('disabled', action.classes)
        self.assertIn('ajax-modal', action.classes)
        self.assertEqual('Create Port Forward (Quota exceeded)',
                         str(action.verbose_name))
        # Room again (a forward deleted): enabled again.
        self.stub.routes[('GET', self.path)] = (200, details((2, 1), (1000, 1)))
        self.assertTrue(action.allowed(self.request))
        self.assertNotIn('disabled', action.classes)

    def test_create_stays_enabled_without_a_quota_answer(self):
        self.stub.routes[('GET', self.path)] = (403, {'error': {
            'code': 403, 'title': 'Forbidden',
            'message': 'policy does not allow quota:get to be performed'}})
        action = self.action()
        self.assertTrue(action.allowed(self.request))
        self.assertNotIn('disabled', action.classes)
        self.assertNotIn('title', action.attrs)
