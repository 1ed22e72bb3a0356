"""The REST client: endpoint from the catalog in the user's region, the
user's token, and every error class Horizon must show instead of a traceback."""

import unittest

from tests import support

from navigator_horizon import api  # noqa: E402


class ApiClientTest(unittest.TestCase):
    def setUp(self):
        self.stub = support.StubNavigator()
        self.request = support.request(self.stub.url)

    def tearDown(self):
        self.stub.close()

    def test_uses_the_users_token_and_region_endpoint(self):
        self.stub.routes[('GET', '/v1/forwards')] = (200, {
            'forwards': [support.forward()], 'forwards_links': []})
        forwards = api.forward_list(self.request)
        self.assertEqual(['f-1'], [f.id for f in forwards])
        self.assertEqual('203.0.113.5:20000', forwards[0].external)
        method, path, headers, _ = self.stub.requests[0]
        self.assertEqual('GET', method)
        self.assertTrue(path.startswith('/v1/forwards'))
        self.assertEqual('user-token', headers['X-Auth-Token'])

    def test_endpoint_ending_in_v1_is_not_doubled(self):
        request = support.request(self.stub.url + '/v1/')
        self.assertEqual(self.stub.url, api.endpoint(request))

    def test_follows_next_links(self):
        first = [support.forward(id='a')]
        self.stub.routes[('GET', '/v1/forwards')] = (200, {
            'forwards': first, 'forwards_links': [{'rel': 'next', 'href': '...'}]})
        calls = []
        original = api.call

        def call(request, method, path, body=None, params=None, **kw):
            calls.append(dict(params or {}))
            if len(calls) == 2:
                self.stub.routes[('GET', '/v1/forwards')] = (200, {
                    'forwards': [support.forward(id='b')], 'forwards_links': []})
            return original(request, method, path, body=body, params=params, **kw)

        api.call = call
        try:
            forwards = api.forward_list(self.request)
        finally:
            api.call = original
        self.assertEqual(['a', 'b'], [f.id for f in forwards])
        self.assertEqual('a', calls[1]['marker'])

    def test_create_sends_only_given_fields(self):
        self.stub.routes[('POST', '/v1/forwards')] = (201, {'forward': support.forward()})
        api.forward_create(self.request, protocol='tcp', internal_ip_address='10.0.0.5',
                           internal_port=22, external_port=None, description='')
        body = self.stub.requests[0][3]
        self.assertEqual({'forward': {'protocol': 'tcp', 'internal_ip_address': '10.0.0.5',
                                      'internal_port': 22}}, body)

    def test_field_error_names_the_field(self):
        self.stub.routes[('POST', '/v1/forwards')] = (400, {'error': {
            'code': 400, 'title': 'Bad Request',
            'message': 'invalid internal_port: 70000 is outside the port range 1-65535'}})
        with self.assertRaises(api.BadRequest) as caught:
            api.forward_create(self.request, protocol='tcp',
                               internal_ip_address='10.0.0.5', internal_port=70000)
        self.assertEqual('internal_port', caught.exception.field)
        self.assertEqual('70000 is outside the port range 1-65535', str(caught.exception))

    def test_taken_port_belongs_to_external_port(self):
        self.stub.routes[('POST', '/v1/forwards')] = (409, {'error': {
            'code': 409, 'title': 'Conflict',
            'message': 'external port 20000/tcp on 203.0.113.5 is taken by forward f-9'}})
        with self.assertRaises(api.Conflict) as caught:
            api.forward_create(self.request, protocol='tcp',
                               internal_ip_address='10.0.0.5', internal_port=22,
                               external_port=20000)
        self.assertEqual('external_port', caught.exception.field)

    def test_status_codes_map_to_horizon_exceptions(self):
        from horizon import exceptions
        cases = [(404, api.NotFound, exceptions.NotFound),
                 (401, api.Unauthorized, exceptions.NotAuthorized),
                 (403, api.Forbidden, exceptions.NotAvailable),
                 (503, api.Unavailable, exceptions.NotAvailable),
                 (500, api.Unavailable, exceptions.NotAvailable)]
        for status, ours, horizons in cases:
            self.stub.routes[('GET', '/v1/forwards/x')] = (status, {'error': {
                'code': status, 'title': 't', 'message': 'm'}})
            with self.assertRaises(ours) as caught:
                api.forward_get(self.request, 'x')
            self.assertIsInstance(caught.exception, horizons)

    def test_unreachable_is_unavailable(self):
        self.stub.close()
        with self.assertRaises(api.Unavailable) as caught:
            api.forward_list(self.request)
        self.assertIn('unavailable', str(caught.exception))
        self.stub = support.StubNavigator()  # for tearDown

    def test_no_endpoint_in_the_region_is_a_catalog_error(self):
        from horizon import exceptions
        request = support.request(self.stub.url, current_region='Nowhere')
        with self.assertRaises(exceptions.ServiceCatalogException):
            api.endpoint(request)

    def test_delete(self):
        self.stub.routes[('DELETE', '/v1/forwards/f-1')] = (204, None)
        self.assertIsNone(api.forward_delete(self.request, 'f-1'))


if __name__ == '__main__':
    unittest.main()
