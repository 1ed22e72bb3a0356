//! Validating user tokens with the service's own credentials, with a cache (server side).
