"""The traffic controls (allowed_cidrs, max_connections, proxy_protocol) in
the create and retarget forms and in the table, against the stub API."""

import unittest

from tests import support

from navigator_horizon import api  # noqa: E402
from navigator_horizon.port_forwards import forms as pf_forms  # noqa: E402


class ControlsTest(unittest.TestCase):
    def setUp(self):
        self.stub = support.StubNavigator()
        self.request = support.request(self.stub.url, compute=False)

    def tearDown(self):
        self.stub.close()

    def test_create_sends_the_controls(self):
        self.stub.routes[('POST', '/v1/forwards')] = (201, {'forward': support.forward()})
        form = pf_forms.CreateForm(self.request, data={
            'internal_ip_address': '10.0.0.5', 'internal_port': '25', 'protocol': 'tcp',
            'allowed_cidrs': '192.0.2.0/24,  2001:db8::/32\n10.0.0.0/8',
            'max_connections': '100', 'proxy_protocol': 'v2'})
        self.assertTrue(form.is_valid(), form.errors)
        form.handle(self.request, form.cleaned_data)
        sent = self.stub.requests[0][3]['forward']
        self.assertEqual(['192.0.2.0/24', '2001:db8::/32', '10.0.0.0/8'], sent['allowed_cidrs'])
        self.assertEqual(100, sent['max_connections'])
        self.assertEqual('v2', sent['proxy_protocol'])

    def test_create_without_controls_sends_none_of_them(self):
        self.stub.routes[('POST', '/v1/forwards')] = (201, {'forward': support.forward()})
        form = pf_forms.CreateForm(self.request, data={
            'internal_ip_address': '10.0.0.5', 'internal_port': '22', 'protocol': 'tcp'})
        self.assertTrue(form.is_valid(), form.errors)
        form.handle(self.request, form.cleaned_data)
        sent = self.stub.requests[0][3]['forward']
        for field in ('allowed_cidrs', 'max_connections', 'proxy_protocol'):
            self.assertNotIn(field, sent)

    def test_bad_limits_are_refused_by_the_form(self):
        for bad in ('0', '-1', '1000001', 'many'):
            form = pf_forms.CreateForm(self.request, data={
                'internal_ip_address': '10.0.0.5', 'internal_port': '22',
                'protocol': 'tcp', 'max_connections': bad})
            self.assertFalse(form.is_valid(), bad)
            self.assertIn('max_connections', form.errors)
        form = pf_forms.CreateForm(self.request, data={
            'internal_ip_address': '10.0.0.5', 'internal_port': '22',
            'protocol': 'tcp', 'proxy_protocol': 'v3'})
        self.assertFalse(form.is_valid())
        self.assertIn('proxy_protocol', form.errors)

    def test_api_cidr_error_lands_on_the_field(self):
        self.stub.routes[('POST', '/v1/forwards')] = (400, {'error': {
            'code': 400, 'title': 'Bad Request',
            'message': "invalid allowed_cidrs: '10.0.0.1/8' has host bits set: "
                       "did you mean 10.0.0.0/8?"}})
        form = pf_forms.CreateForm(self.request, data={
            'internal_ip_address': '10.0.0.5', 'internal_port': '22', 'protocol': 'tcp',
            'allowed_cidrs': '10.0.0.1/8'})
        self.assertTrue(form.is_valid(), form.errors)
        self.assertFalse(form.handle(self.request, form.cleaned_data))
        self.assertIn('did you mean 10.0.0.0/8?', form.errors['allowed_cidrs'][0])

    def test_retarget_form_clears_emptied_controls(self):
        self.stub.routes[('PUT', '/v1/forwards/f-1')] = (200, {'forward': support.forward()})
        form = pf_forms.RetargetForm(self.request, data={
            'forward_id': 'f-1', 'internal_ip_address': '10.0.0.5', 'internal_port': '22',
            'allowed_cidrs': '', 'max_connections': '', 'proxy_protocol': 'none'})
        self.assertTrue(form.is_valid(), form.errors)
        form.handle(self.request, form.cleaned_data)
        sent = self.stub.requests[0][3]['forward']
        self.assertEqual([], sent['allowed_cidrs'])
        self.assertIn('max_connections', sent)
        self.assertIsNone(sent['max_connections'])
        self.assertEqual('none', sent['proxy_protocol'])

    def test_forward_shows_its_controls(self):
        plain = api.PortForward(support.forward())
        self.assertEqual('-', plain.controls)
        self.assertEqual([], plain.allowed_cidrs)
        self.assertEqual('none', plain.proxy_protocol)
        limited = api.PortForward(support.forward(
            allowed_cidrs=['192.0.2.0/24'], max_connections=10, proxy_protocol='v1'))
        self.assertEqual('from 192.0.2.0/24; at most 10 connections; PROXY v1',
                         limited.controls)


if __name__ == '__main__':
    unittest.main()
