//! `ssak3 check NAME=HOST:PORT …`: what `helm test` runs against a release.
//! For each service, through the address clients use (its Kubernetes
//! Service): the gRPC health check says SERVING, and one real call, server
//! reflection's ListServices, names the service's own API (`ssak3.NAME.v1.*`)
//! and the health service. So a Service that selects the wrong pods, a port
//! that leads elsewhere or a service that is up but not ready all fail.

use std::{str::FromStr, time::Duration};

use anyhow::Context as _;
use tonic::transport::Endpoint;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

/// One service to check: its name (`reservation`, …) and where clients reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    pub address: String,
}

impl FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, address) = s
            .split_once('=')
            .filter(|(name, address)| !name.is_empty() && address.contains(':'))
            .ok_or_else(|| format!("`{s}` is not NAME=HOST:PORT"))?;
        Ok(Self {
            name: name.to_owned(),
            address: address.to_owned(),
        })
    }
}

/// Checks every target, prints one line for each, and fails naming those that failed.
pub async fn run(targets: &[Target], timeout: Duration) -> anyhow::Result<()> {
    let mut failed = Vec::new();
    for target in targets {
        match check(target, timeout).await {
            Ok(services) => println!(
                "{:<12} {:<24} SERVING  {}",
                target.name,
                target.address,
                services.join(" ")
            ),
            Err(error) => {
                println!(
                    "{:<12} {:<24} FAILED   {error:#}",
                    target.name, target.address
                );
                failed.push(target.name.as_str());
            }
        }
    }
    anyhow::ensure!(
        failed.is_empty(),
        "{} of {} services failed the check: {}",
        failed.len(),
        targets.len(),
        failed.join(", ")
    );
    Ok(())
}

/// Health, then reflection; returns the services reflection lists.
async fn check(target: &Target, timeout: Duration) -> anyhow::Result<Vec<String>> {
    let channel = Endpoint::from_shared(format!("http://{}", target.address))?
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect()
        .await
        .with_context(|| format!("cannot connect to {}", target.address))?;

    let status = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .context("health check")?
        .into_inner()
        .status;
    anyhow::ensure!(
        status == ServingStatus::Serving as i32,
        "health is {}, not SERVING",
        ServingStatus::try_from(status).map_or("unknown", |s| s.as_str_name())
    );

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::once(request))
        .await
        .context("server reflection")?
        .into_inner();
    let answer = answers
        .message()
        .await
        .context("server reflection")?
        .context("server reflection sent no answer")?;
    let services: Vec<String> = match answer.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        Some(MessageResponse::ErrorResponse(error)) => {
            anyhow::bail!("server reflection answered {}", error.error_message)
        }
        _ => anyhow::bail!("server reflection answered something else than a service list"),
    };
    let own = format!("ssak3.{}.v1.", target.name);
    anyhow::ensure!(
        services.iter().any(|s| s.starts_with(&own)),
        "reflection lists no {own}* service, only {}",
        services.join(", ")
    );
    anyhow::ensure!(
        services.iter().any(|s| s == "grpc.health.v1.Health"),
        "reflection does not list grpc.health.v1.Health"
    );
    Ok(services)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_name_equals_address() {
        assert_eq!(
            "payment=ssak3-payment:50052".parse(),
            Ok(Target {
                name: "payment".into(),
                address: "ssak3-payment:50052".into()
            })
        );
        assert!("ssak3-payment:50052".parse::<Target>().is_err());
        assert!("=host:1".parse::<Target>().is_err());
        assert!("payment=host".parse::<Target>().is_err());
    }
}
