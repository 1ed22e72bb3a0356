//! `navigator-server keystone register`: Navigator's entry in the Keystone
//! catalog (service `navigator` of type `port-forwarding`, with public,
//! internal and admin endpoints), created or brought up to date.

use std::fmt::Write as _;

use anyhow::anyhow;
use navigator_keystone::validate::{EndpointSpec, PasswordCredentials, register_service_with};

use crate::auth::{keystone_client_error, keystone_tls, password_credentials, warn_if_insecure};
use crate::cli::RegisterArgs;
use crate::config::Config;
use crate::run::StartError;

/// The service's name in the catalog.
pub const SERVICE_NAME: &str = "navigator";
/// The service type clients look Navigator up by; fixed once and for all,
/// since renaming a type breaks every client.
pub const SERVICE_TYPE: &str = "port-forwarding";

/// Admin credentials from the `OS_*` environment when `OS_AUTH_URL` is set.
fn credentials_from_env(
    var: impl Fn(&str) -> Option<String>,
) -> Result<Option<PasswordCredentials>, StartError> {
    let Some(auth_url) = var("OS_AUTH_URL").filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let required = |name: &str| {
        var(name).filter(|v| !v.is_empty()).ok_or_else(|| {
            StartError::Usage(anyhow!(
                "OS_AUTH_URL is set but {name} is not: set OS_USERNAME, OS_PASSWORD and OS_PROJECT_NAME too (an admin's credentials)"
            ))
        })
    };
    let domain = |name: &str| {
        var(name)
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "Default".into())
    };
    Ok(Some(PasswordCredentials {
        auth_url,
        username: required("OS_USERNAME")?,
        password: required("OS_PASSWORD")?,
        project_name: required("OS_PROJECT_NAME")?,
        user_domain_name: domain("OS_USER_DOMAIN_NAME"),
        project_domain_name: domain("OS_PROJECT_DOMAIN_NAME"),
    }))
}

fn check_url(flag: &str, url: &str) -> Result<String, StartError> {
    let url = url.trim().trim_end_matches('/');
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(url.to_owned())
    } else {
        Err(StartError::Usage(anyhow!(
            "{flag} {url:?}: expected an http:// or https:// URL"
        )))
    }
}

/// Registers Navigator in the catalog and says what changed.
pub async fn register(config: &Config, args: &RegisterArgs) -> Result<String, StartError> {
    let admin = match credentials_from_env(|name| std::env::var(name).ok())? {
        Some(admin) => admin,
        None => {
            let ks = &config.keystone_authtoken;
            if ks.auth_url.is_empty() || ks.username.is_empty() {
                return Err(StartError::Usage(anyhow!(
                    "no Keystone credentials: set OS_AUTH_URL, OS_USERNAME, OS_PASSWORD and OS_PROJECT_NAME (an admin), or [keystone_authtoken] in the configuration file"
                )));
            }
            password_credentials(ks)
        }
    };
    let public = check_url("--public-url", &args.public_url)?;
    let internal = match &args.internal_url {
        Some(url) => check_url("--internal-url", url)?,
        None => public.clone(),
    };
    let admin_url = match &args.admin_url {
        Some(url) => check_url("--admin-url", url)?,
        None => internal.clone(),
    };
    let region = args
        .region
        .clone()
        .or_else(|| config.keystone_authtoken.region_name.clone())
        .unwrap_or_else(|| "RegionOne".into());
    let endpoints = [
        ("public", public),
        ("internal", internal),
        ("admin", admin_url),
    ]
    .map(|(interface, url)| EndpointSpec {
        interface: interface.into(),
        url,
    });
    // [keystone_authtoken]'s TLS options, whoever's credentials are used;
    // OS_CACERT (openstackclient's) names the CA bundle for an admin's.
    let mut tls = keystone_tls(&config.keystone_authtoken);
    if let Some(cacert) = std::env::var_os("OS_CACERT").filter(|v| !v.is_empty()) {
        tls.cacert = Some(cacert.into());
    }
    warn_if_insecure(&config.keystone_authtoken);
    let report = register_service_with(
        &admin,
        &tls,
        SERVICE_NAME,
        SERVICE_TYPE,
        "Navigator port forwarding",
        &region,
        &endpoints,
    )
    .await
    .map_err(|e| match e {
        // A bad CA bundle, certificate or key is the configuration's fault.
        e @ navigator_keystone::validate::KeystoneError::Tls(_) => {
            StartError::Usage(keystone_client_error(e))
        }
        e => StartError::Runtime(anyhow!("{e}")),
    })?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "service {SERVICE_NAME} ({SERVICE_TYPE}) {}: {}",
        if report.service_created {
            "created"
        } else {
            "exists"
        },
        report.service_id
    );
    if report.region_created {
        let _ = writeln!(out, "region {region} created");
    }
    for (what, list) in [
        ("created", &report.endpoints_created),
        ("updated", &report.endpoints_updated),
        ("unchanged", &report.endpoints_unchanged),
    ] {
        for interface in list {
            let _ = writeln!(out, "endpoint {interface} in {region} {what}");
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_credentials_need_the_basics_and_default_the_domains() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert!(credentials_from_env(env(&[])).unwrap().is_none());
        let err = credentials_from_env(env(&[("OS_AUTH_URL", "http://k/v3")])).unwrap_err();
        assert!(matches!(err, StartError::Usage(e) if e.to_string().contains("OS_USERNAME")));
        let creds = credentials_from_env(env(&[
            ("OS_AUTH_URL", "http://k/v3"),
            ("OS_USERNAME", "admin"),
            ("OS_PASSWORD", "pw"),
            ("OS_PROJECT_NAME", "admin"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(creds.user_domain_name, "Default");
        assert_eq!(creds.project_domain_name, "Default");
    }
}
