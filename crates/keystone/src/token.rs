//! Token documents as Keystone returns them, and their expiry times.
