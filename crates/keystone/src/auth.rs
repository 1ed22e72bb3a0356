//! Authenticating to Keystone and reading the service catalog (client side).
