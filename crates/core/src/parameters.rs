//! SSM Parameter Store: the config document, the GitHub credentials, the webhook secret and the
//! JIT configs of runners (launch slots are in DynamoDB: `slots`). Values read here are never logged.

use async_trait::async_trait;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ParametersError {
    #[error("SSM parameter `{0}` does not exist in this region")]
    NotFound(String),
    #[error("SSM refused access to parameter `{name}`: {reason}")]
    AccessDenied { name: String, reason: String },
    #[error("SSM throttled the request for parameter `{0}`; it will be retried")]
    Throttled(String),
    #[error("SSM request for parameter `{name}` failed: {reason}")]
    Failed { name: String, reason: String },
    /// Parameter Store refused the request as such (too large a value, a bad name): retrying
    /// the same request cannot succeed.
    #[error("SSM refused parameter `{name}`: {reason}")]
    Invalid { name: String, reason: String },
}

impl ParametersError {
    /// Worth trying again later (the message is handed back, the step retried).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Throttled(_) | Self::Failed { .. })
    }
}

/// The largest value a Standard parameter holds, in characters.
pub const STANDARD_TIER_VALUE_MAX: usize = 4096;

/// A parameter found below a path: its name, and when it was last written (None when SSM did
/// not say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    pub modified: Option<std::time::SystemTime>,
    /// The value of a String parameter (a SecureString's is not decrypted: None).
    pub value: Option<String>,
}

#[async_trait]
pub trait Parameters: Send + Sync {
    /// The decrypted value of a parameter.
    async fn get(&self, name: &str) -> Result<String, ParametersError>;
    /// Writes a SecureString of up to 8 KB (Intelligent-Tiering when the value fits in 4 KB, so
    /// Standard; Advanced above), replacing any earlier value, and tags it (the tags replace
    /// earlier values of the same keys).
    async fn put_secure(&self, name: &str, value: &str, tags: &[(String, String)]) -> Result<(), ParametersError>;
    /// Deletes a parameter; a parameter already gone is not an error.
    async fn delete(&self, name: &str) -> Result<(), ParametersError>;
    /// The parameters below a path (recursively), with their last write and, for String
    /// parameters, their value (SecureStrings are not decrypted).
    async fn list(&self, path: &str) -> Result<Vec<Listed>, ParametersError>;
}

/// The real adapter over the SSM API.
#[derive(Clone)]
pub struct SsmParameters {
    client: aws_sdk_ssm::Client,
}

impl SsmParameters {
    pub fn new(sdk: &aws_config::SdkConfig) -> Self {
        Self {
            client: aws_sdk_ssm::Client::new(sdk),
        }
    }

    pub fn client(&self) -> &aws_sdk_ssm::Client {
        &self.client
    }
}

fn classify<E, R>(name: &str, error: &aws_sdk_ssm::error::SdkError<E, R>) -> ParametersError
where
    E: aws_sdk_ssm::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let reason = crate::aws::describe(error);
    match crate::aws::code(error) {
        Some("ParameterNotFound") => ParametersError::NotFound(name.into()),
        Some("AccessDeniedException") => ParametersError::AccessDenied {
            name: name.into(),
            reason,
        },
        Some("ThrottlingException" | "TooManyUpdates") => ParametersError::Throttled(name.into()),
        Some("ValidationException" | "ParameterMaxVersionLimitExceeded" | "HierarchyLevelLimitExceededException") => {
            ParametersError::Invalid {
                name: name.into(),
                reason,
            }
        }
        _ => ParametersError::Failed {
            name: name.into(),
            reason,
        },
    }
}

#[async_trait]
impl Parameters for SsmParameters {
    async fn get(&self, name: &str) -> Result<String, ParametersError> {
        let output = self
            .client
            .get_parameter()
            .name(name)
            .with_decryption(true)
            .send()
            .await
            .map_err(|error| classify(name, &error))?;
        output
            .parameter
            .and_then(|parameter| parameter.value)
            .ok_or_else(|| ParametersError::NotFound(name.into()))
    }

    async fn put_secure(&self, name: &str, value: &str, tags: &[(String, String)]) -> Result<(), ParametersError> {
        self.client
            .put_parameter()
            .name(name)
            .value(value)
            .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
            // GitHub's JIT configs exceed the Standard tier's 4 KB. Intelligent-Tiering should make
            // such a value Advanced (8 KB, charged) and keep a smaller one Standard (free)
            // (https://docs.aws.amazon.com/systems-manager/latest/userguide/ps-default-tier.html),
            // but users report AWS refusing values over 4 KB sent that way
            // (terraform-provider-aws#18521, aws-sdk-net#3157): a large value asks for Advanced.
            .tier(if value.len() > STANDARD_TIER_VALUE_MAX {
                aws_sdk_ssm::types::ParameterTier::Advanced
            } else {
                aws_sdk_ssm::types::ParameterTier::IntelligentTiering
            })
            .overwrite(true)
            .send()
            .await
            .map_err(|error| classify(name, &error))?;
        if tags.is_empty() {
            return Ok(());
        }
        // PutParameter takes no tags together with Overwrite: they are written after it, every
        // time, so that a parameter somebody made beforehand cannot keep another owner's tag.
        self.client
            .add_tags_to_resource()
            .resource_type(aws_sdk_ssm::types::ResourceTypeForTagging::Parameter)
            .resource_id(name)
            .set_tags(Some(
                tags.iter()
                    .map(|(key, value)| {
                        aws_sdk_ssm::types::Tag::builder()
                            .key(key)
                            .value(value)
                            .build()
                            .expect("key and value are set")
                    })
                    .collect(),
            ))
            .send()
            .await
            .map_err(|error| classify(name, &error))?;
        Ok(())
    }

    async fn delete(&self, name: &str) -> Result<(), ParametersError> {
        match self.client.delete_parameter().name(name).send().await {
            Ok(_) => Ok(()),
            Err(error) => match classify(name, &error) {
                ParametersError::NotFound(_) => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn list(&self, path: &str) -> Result<Vec<Listed>, ParametersError> {
        let mut names = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let output = self
                .client
                .get_parameters_by_path()
                .path(path.trim_end_matches('/'))
                .recursive(true)
                .with_decryption(false)
                .set_next_token(token.take())
                .send()
                .await
                .map_err(|error| classify(path, &error))?;
            names.extend(output.parameters().iter().filter_map(|p| {
                Some(Listed {
                    name: p.name()?.to_string(),
                    value: (p.r#type() == Some(&aws_sdk_ssm::types::ParameterType::String))
                        .then(|| p.value().map(str::to_string))
                        .flatten(),
                    modified: p
                        .last_modified_date()
                        .and_then(|at| std::time::SystemTime::try_from(*at).ok()),
                })
            }));
            match output.next_token {
                Some(next) if !next.is_empty() => token = Some(next),
                _ => break,
            }
        }
        Ok(names)
    }
}

/// Names another parameter a Lambda reads at every cold start besides its config document (the
/// webhook secret, the GitHub credential): Terraform sets it, comma-separated.
pub const SECRET_PARAMS_ENV: &str = "SOPHONS_SECRET_PARAMS";

/// The config document and the parameters `SOPHONS_SECRET_PARAMS` names, read in one
/// GetParameters call at cold start, then served from memory; any other name is read from SSM.
/// A cold start thus waits on one Parameter Store round trip, not one per parameter in a row. It
/// lives only through the cold start (the values are secret).
pub struct Prefetched<'a> {
    inner: &'a SsmParameters,
    values: std::collections::HashMap<String, String>,
}

impl<'a> Prefetched<'a> {
    /// Reads what the environment names. A failure here is not an error: each parameter is then
    /// read on its own, and that read's error is the one reported.
    pub async fn cold_start(inner: &'a SsmParameters) -> Self {
        let mut names: Vec<String> = std::env::var(SECRET_PARAMS_ENV)
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .map(str::to_string)
            .collect();
        if std::env::var(crate::config::CONFIG_ENV).is_err()
            && let Ok(config) = std::env::var(crate::config::CONFIG_PARAM_ENV)
        {
            names.insert(0, config);
        }
        Self::read(inner, names).await
    }

    /// Reads `names` in one GetParameters call (the first 10: its limit).
    pub async fn read(inner: &'a SsmParameters, mut names: Vec<String>) -> Self {
        names.dedup();
        names.truncate(10);
        let mut values = std::collections::HashMap::new();
        if names.len() > 1 {
            match inner
                .client
                .get_parameters()
                .set_names(Some(names))
                .with_decryption(true)
                .send()
                .await
            {
                Ok(output) => {
                    values.extend(
                        output
                            .parameters()
                            .iter()
                            .filter_map(|p| Some((p.name()?.to_string(), p.value()?.to_string()))),
                    );
                }
                Err(error) => {
                    tracing::warn!(
                        error = crate::aws::describe(&error),
                        "cannot read the cold start's parameters together; reading them one by one"
                    );
                }
            }
        }
        Self { inner, values }
    }
}

#[async_trait]
impl Parameters for Prefetched<'_> {
    async fn get(&self, name: &str) -> Result<String, ParametersError> {
        match self.values.get(name) {
            Some(value) => Ok(value.clone()),
            None => self.inner.get(name).await,
        }
    }
    async fn put_secure(&self, name: &str, value: &str, tags: &[(String, String)]) -> Result<(), ParametersError> {
        self.inner.put_secure(name, value, tags).await
    }
    async fn delete(&self, name: &str) -> Result<(), ParametersError> {
        self.inner.delete(name).await
    }
    async fn list(&self, path: &str) -> Result<Vec<Listed>, ParametersError> {
        self.inner.list(path).await
    }
}
