################################################################################
# Deployment
################################################################################

variable "deployment" {
  description = "Name of this deployment. Prefixes every resource name, SSM parameter path and the `sophons:deployment` tag that scopes all IAM permissions. 1-24 characters of lowercase letters, digits and hyphens, starting with a letter."
  type        = string
  default     = "sophons"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,23}$", var.deployment))
    error_message = "deployment must be 1-24 characters of [a-z0-9-], starting with a letter."
  }
}

variable "tags" {
  description = "Tags added to every resource this module creates (and to the runner instances through their launch templates)."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k in keys(var.tags) : !startswith(k, "sophons:")])
    error_message = "Tag keys starting with `sophons:` are reserved: the Lambdas and IAM conditions use them."
  }
}

################################################################################
# GitHub
################################################################################

variable "github_owner" {
  description = "The GitHub organization (scope `org`) or the user/organization that owns the repositories (scope `repo`) the runners serve."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})$", var.github_owner))
    error_message = "github_owner must be a GitHub login: 1-39 characters of letters, digits and hyphens, not starting with a hyphen."
  }
}

variable "github_scope" {
  description = "Where runners are registered: `org` (organization runners, one runner group) or `repo` (repository runners, registered on the job's repository)."
  type        = string
  default     = "org"

  validation {
    condition     = contains(["org", "repo"], var.github_scope)
    error_message = "github_scope must be `org` or `repo`."
  }
}

variable "github_api_url" {
  description = "GitHub REST API base URL. Change it for GitHub Enterprise Server (for example `https://github.example.com/api/v3`)."
  type        = string
  default     = "https://api.github.com"

  validation {
    # Plain http is allowed on loopback only: the demo's and the tests' fake GitHub.
    condition     = can(regex("^(https://[^\\s]+|http://127\\.0\\.0\\.1:[0-9]+)[^/]?$", var.github_api_url)) && !endswith(var.github_api_url, "/")
    error_message = "github_api_url must be an https:// URL without a trailing slash (http:// only on 127.0.0.1, for local testing)."
  }
}

variable "runner_group_id" {
  description = "Runner group the JIT runners join (scope `org`). 1 is the organization's Default group."
  type        = number
  default     = 1

  validation {
    condition     = var.runner_group_id >= 1 && floor(var.runner_group_id) == var.runner_group_id
    error_message = "runner_group_id must be a positive integer."
  }
}

variable "repositories" {
  description = "Allow-list of repositories (`<github_owner>/name`) whose jobs get runners. Empty means every repository of github_owner."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for r in var.repositories : can(regex("^[A-Za-z0-9-]+/[A-Za-z0-9._-]+$", r))])
    error_message = "Each entry of repositories must look like `owner/name`."
  }
}

variable "allow_public_repositories" {
  description = "Whether jobs from public repositories get runners. Off by default: a fork's pull request could run untrusted code on your runners."
  type        = bool
  default     = false
}

################################################################################
# Secrets: either a value (Terraform creates the SecureString, and the value is
# kept in the Terraform state) or the name of a parameter you created yourself.
################################################################################

variable "github_token" {
  description = "GitHub personal access token. Terraform stores it as a SecureString parameter (and in its state). Prefer github_token_parameter_name. Set exactly one credential: a token (value or parameter) or a GitHub App."
  type        = string
  default     = null
  sensitive   = true
}

variable "github_token_parameter_name" {
  description = "Name of an existing SecureString parameter holding the GitHub personal access token."
  type        = string
  default     = null

  validation {
    condition     = var.github_token_parameter_name == null || can(regex("^/[A-Za-z0-9_.\\-/]+$", var.github_token_parameter_name))
    error_message = "github_token_parameter_name must be a fully qualified SSM parameter name starting with `/`."
  }
}

variable "github_app" {
  description = "GitHub App credentials (instead of a token): the App id and its installation id on github_owner. The private key comes from github_app_private_key or github_app_private_key_parameter_name."
  type = object({
    app_id          = number
    installation_id = number
  })
  default = null
}

variable "github_app_private_key" {
  description = "The GitHub App's private key (PEM). Terraform stores it as a SecureString parameter (and in its state). Prefer github_app_private_key_parameter_name."
  type        = string
  default     = null
  sensitive   = true
}

variable "github_app_private_key_parameter_name" {
  description = "Name of an existing SecureString parameter holding the GitHub App's private key (PEM)."
  type        = string
  default     = null

  validation {
    condition     = var.github_app_private_key_parameter_name == null || can(regex("^/[A-Za-z0-9_.\\-/]+$", var.github_app_private_key_parameter_name))
    error_message = "github_app_private_key_parameter_name must be a fully qualified SSM parameter name starting with `/`."
  }
}

variable "github_webhook_id" {
  description = "Id of the webhook GitHub sends workflow_job deliveries through (the organisation's, or github_webhook_repository's): move-jobs then asks GitHub each run to redeliver its failed workflow_job deliveries, once each. Needs the \"Webhooks: read and write\" permission (GitHub App) or the admin:org_hook scope (classic token; admin:repo_hook for a repository hook). Null turns redelivery off."
  type        = number
  default     = null

  validation {
    condition     = var.github_webhook_id == null || try(var.github_webhook_id >= 1 && floor(var.github_webhook_id) == var.github_webhook_id, false)
    error_message = "github_webhook_id must be the hook's id, a whole number of at least 1 (the number at the end of the hook's settings URL), or null."
  }
}

variable "github_webhook_repository" {
  description = "`owner/name` when the webhook is a repository's hook rather than github_owner's organisation hook. Needs github_webhook_id."
  type        = string
  default     = null

  validation {
    condition     = var.github_webhook_repository == null || can(regex("^[A-Za-z0-9][A-Za-z0-9-]*/[A-Za-z0-9._-]+$", var.github_webhook_repository))
    error_message = "github_webhook_repository must be `owner/name`, or null for the organisation's hook."
  }
}

variable "redelivery_lookback_minutes" {
  description = "How far back move-jobs looks for failed webhook deliveries to redeliver, in minutes (GitHub keeps deliveries 3 days)."
  type        = number
  default     = 180

  validation {
    condition     = floor(var.redelivery_lookback_minutes) == var.redelivery_lookback_minutes && var.redelivery_lookback_minutes >= 1 && var.redelivery_lookback_minutes <= 4320
    error_message = "redelivery_lookback_minutes must be a whole number from 1 to 4320 (3 days, as long as GitHub keeps deliveries)."
  }
}

variable "webhook_secret" {
  description = "The webhook secret GitHub signs deliveries with. Terraform stores it as a SecureString parameter (and in its state). Prefer webhook_secret_parameter_name."
  type        = string
  default     = null
  sensitive   = true
}

variable "webhook_secret_parameter_name" {
  description = "Name of an existing SecureString parameter holding the webhook secret."
  type        = string
  default     = null

  validation {
    condition     = var.webhook_secret_parameter_name == null || can(regex("^/[A-Za-z0-9_.\\-/]+$", var.webhook_secret_parameter_name))
    error_message = "webhook_secret_parameter_name must be a fully qualified SSM parameter name starting with `/`."
  }
}

variable "parameter_kms_key_arn" {
  description = "ARN of a customer-managed KMS key that encrypts the credential parameters. Null uses the AWS-managed `aws/ssm` key, which needs no extra IAM permission."
  type        = string
  default     = null

  validation {
    condition     = var.parameter_kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/.+$", var.parameter_kms_key_arn))
    error_message = "parameter_kms_key_arn must be a KMS key ARN (arn:aws:kms:<region>:<account>:key/<id>)."
  }
}

################################################################################
# Runners
################################################################################

variable "vpc_id" {
  description = "VPC the runner instances run in. Their subnets need outbound HTTPS to GitHub, SSM, S3 and CloudWatch Logs (a NAT gateway or VPC endpoints): runners get no public IP."
  type        = string

  validation {
    condition     = can(regex("^vpc-[0-9a-f]+$", var.vpc_id))
    error_message = "vpc_id must look like vpc-0123456789abcdef0."
  }
}

variable "subnet_ids" {
  description = "Default subnets for runner templates that do not list their own. More subnets (in more availability zones) give Spot more capacity pools."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for s in var.subnet_ids : can(regex("^subnet-[0-9a-f]+$", s))])
    error_message = "Each subnet id must look like subnet-0123456789abcdef0."
  }
}

variable "runner_templates" {
  description = <<-EOT
    Runner templates by name. A template serves a job when every label of the job (case-insensitively) is among the
    template's labels, `self-hosted` and the template's name; of several, the one with the fewest labels wins, ties
    broken by name; jobs without `self-hosted` are never served. Keys are template names ([A-Za-z0-9_-], up to 64 characters); workflows use them as labels:
    `runs-on: [self-hosted, <template>]`.
      labels             - labels the runner registers with, besides `self-hosted` and the template name (which
                           create-runner adds); at most 98
      instance_types     - instance types Spot may choose from (price-capacity-optimized); all of one architecture
      ami_id             - AMI id; when null, ami_ssm_parameter is resolved at launch
      ami_ssm_parameter  - SSM (public) parameter holding the AMI id (default: latest Amazon Linux 2023, x86_64)
      subnet_ids         - subnets for this template (default: var.subnet_ids)
      max_runners        - most instances of this template at once
      on_demand_fallback - launch on-demand when no Spot capacity is available
      volume_size_gb     - root volume size (gp3, encrypted)
      root_device_name   - the AMI's root device (`/dev/xvda` for Amazon Linux)
      spot_max_price     - highest Spot price per hour in USD (null: up to the on-demand price); written to the
                           config document as templates.<name>.spot_max_price only when set
      user_data          - optional cloud-init user data (plain text) run at boot, before the runner script
      packages           - OS packages the runner script installs before the runner starts (dnf or apt-get
                           names); [] for none
      docker             - install Docker, start it and put the runner user in the docker group
      baked_image        - launch from the image_builder pipeline's latest image for the template's architecture
                           (ami_id and ami_ssm_parameter are then ignored; needs image_builder.enabled)
      rerun_interrupted_jobs - a job that failed because EC2 took back its spot instance is re-run once (GitHub's
                           re-run of that job), on-demand; false for jobs that must never run twice (a deploy that is
                           not idempotent). Needs the Actions write permission (docs/deploy.md)
  EOT
  type = map(object({
    labels                 = list(string)
    instance_types         = list(string)
    ami_id                 = optional(string)
    ami_ssm_parameter      = optional(string, "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64")
    subnet_ids             = optional(list(string))
    max_runners            = optional(number, 10)
    on_demand_fallback     = optional(bool, true)
    volume_size_gb         = optional(number, 30)
    root_device_name       = optional(string, "/dev/xvda")
    spot_max_price         = optional(string)
    user_data              = optional(string)
    packages               = optional(list(string), ["git"])
    docker                 = optional(bool, false)
    baked_image            = optional(bool, false)
    rerun_interrupted_jobs = optional(bool, true)
  }))

  validation {
    condition     = length(var.runner_templates) > 0
    error_message = "runner_templates must define at least one template."
  }
  validation {
    condition     = alltrue([for name, _ in var.runner_templates : can(regex("^[A-Za-z0-9_-]{1,64}$", name))])
    error_message = "Template names must be 1-64 characters of [A-Za-z0-9_-]."
  }
  validation {
    condition     = alltrue([for t in values(var.runner_templates) : length(t.labels) <= 98 && alltrue([for l in t.labels : length(l) >= 1 && length(l) <= 256 && !can(regex(",", l))])])
    error_message = "Each template takes at most 98 labels of 1-256 characters without commas."
  }
  validation {
    condition     = alltrue([for t in values(var.runner_templates) : length(t.instance_types) >= 1 && alltrue([for i in t.instance_types : can(regex("^[a-z0-9-]+\\.[a-z0-9-]+$", i))])])
    error_message = "Each template needs at least one instance type such as c7i.large."
  }
  validation {
    condition     = alltrue([for t in values(var.runner_templates) : t.ami_id == null || can(regex("^ami-[0-9a-f]+$", coalesce(t.ami_id, "x")))])
    error_message = "ami_id must look like ami-0123456789abcdef0."
  }
  validation {
    condition     = alltrue([for t in values(var.runner_templates) : startswith(t.ami_ssm_parameter, "/")])
    error_message = "ami_ssm_parameter must be a parameter name starting with `/`."
  }
  validation {
    condition     = alltrue([for t in values(var.runner_templates) : t.max_runners >= 1 && t.max_runners <= 10000 && floor(t.max_runners) == t.max_runners])
    error_message = "max_runners must be an integer from 1 to 10000."
  }
  validation {
    condition     = alltrue([for t in values(var.runner_templates) : t.volume_size_gb >= 8 && t.volume_size_gb <= 16384])
    error_message = "volume_size_gb must be between 8 and 16384."
  }
  validation {
    condition     = alltrue([for t in values(var.runner_templates) : t.spot_max_price == null || can(regex("^[0-9]+(\\.[0-9]+)?$", coalesce(t.spot_max_price, "x")))])
    error_message = "spot_max_price must be a decimal number of USD per hour, such as \"0.05\"."
  }
  validation {
    condition     = alltrue([for t in values(var.runner_templates) : t.subnet_ids == null || alltrue([for s in coalesce(t.subnet_ids, []) : can(regex("^subnet-[0-9a-f]+$", s))])])
    error_message = "Each template subnet id must look like subnet-0123456789abcdef0."
  }
  validation {
    # The runner script hands them to dnf or apt-get: names only, nothing a package manager reads as an option.
    condition     = alltrue([for t in values(var.runner_templates) : alltrue([for p in t.packages : can(regex("^[A-Za-z0-9][A-Za-z0-9._+-]*$", p))])])
    error_message = "Each entry of a template's packages must be an OS package name: letters, digits and . _ + -, starting with a letter or digit (such as \"git\" or \"python3.11\")."
  }
}

variable "runner_pin" {
  description = "An actions-runner release every runner installs instead of GitHub's current one: its version and the SHA-256 of its linux-x64 and linux-arm64 tarballs, as its GitHub release page lists them. Null (the default) follows GitHub's current release, read from GitHub's runner downloads API; GitHub stops giving jobs to a runner not updated within 30 days of a release, so a pin needs updating. Written to the config document as runner_pin only when set."
  type = object({
    version      = string
    sha256_x64   = string
    sha256_arm64 = string
  })
  default = null

  validation {
    condition     = var.runner_pin == null || can(regex("^[0-9]+\\.[0-9]+\\.[0-9]+$", try(var.runner_pin.version, "")))
    error_message = "runner_pin.version must be an actions-runner version such as \"2.330.0\" (without the leading v)."
  }
  validation {
    # Checked only once the version parses (the rule above reports a malformed one).
    condition = try(
      tonumber(split(".", var.runner_pin.version)[0]) * 1000000000000 + tonumber(split(".", var.runner_pin.version)[1]) * 1000000 + tonumber(split(".", var.runner_pin.version)[2]) >= 2000329000000,
      true
    )
    error_message = "runner_pin.version must be 2.329.0 or later: GitHub no longer registers older runners. Pin a current release, or remove runner_pin to follow GitHub's."
  }
  validation {
    condition     = var.runner_pin == null || can(regex("^[0-9A-Fa-f]{64}$", try(var.runner_pin.sha256_x64, "")))
    error_message = "runner_pin.sha256_x64 must be the SHA-256 of actions-runner-linux-x64-<version>.tar.gz (64 hex digits), copied from the release page."
  }
  validation {
    condition     = var.runner_pin == null || can(regex("^[0-9A-Fa-f]{64}$", try(var.runner_pin.sha256_arm64, "")))
    error_message = "runner_pin.sha256_arm64 must be the SHA-256 of actions-runner-linux-arm64-<version>.tar.gz (64 hex digits), copied from the release page."
  }
}

variable "runner_metadata_hop_limit" {
  description = "IMDSv2 hop limit of runner instances. 1 keeps containers started by jobs away from the instance credentials; raise to 2 only if jobs need IMDS from inside containers."
  type        = number
  default     = 1

  validation {
    condition     = var.runner_metadata_hop_limit >= 1 && var.runner_metadata_hop_limit <= 64
    error_message = "runner_metadata_hop_limit must be between 1 and 64."
  }
}

variable "runner_script_path" {
  description = "Path of the runner script uploaded to the script bucket. Null means scripts/runner.sh of this repository (set it when the module is copied away from the repository, e.g. referenced by an absolute path)."
  type        = string
  default     = null
}

variable "runner_cache_enabled" {
  description = "Keep an in-region copy of GitHub's current actions-runner release in the script bucket (`actions-runner/actions-runner-linux-<arch>-<version>.tar.gz`, for the architectures the templates use): move-jobs copies each new release on its schedule, SHA-256 verified, and runners fetch it from there before falling back to GitHub's release downloads. The checksum is verified either way. Costs a few cents a month of S3 storage; false makes every boot download from github.com."
  type        = bool
  default     = true
}

################################################################################
# Baked image (optional)
################################################################################

variable "image_builder" {
  description = <<-EOT
    An EC2 Image Builder pipeline that bakes Amazon Linux 2023 with what the runner script would otherwise install
    at every boot: the runner's libraries (libicu krb5-libs openssl-libs zlib), `packages`, and GitHub's latest
    actions-runner release (its SHA-256 checked against the release notes) in /opt/sophons/actions-runner-<version>.
    Rebuilt on `schedule`; each build writes its AMI id to the SSM parameter
    /imagebuilder/<deployment>/runner-image/<architecture>, which templates with `baked_image = true` launch from.
    Off by default (Image Builder is free; the build instances and the AMI snapshots are billed, see docs/deploy.md).
      enabled        - create the pipeline (one per architecture)
      schedule       - Image Builder cron expression of the rebuild (default daily at 04:00 UTC); every run
                       builds, whether or not the parent image changed
      architectures  - x86_64 and/or arm64: one image per architecture the baked templates use
      instance_types - build instance types per architecture (default x86_64: c7i.large, c6i.large, m7i.large;
                       arm64: c7g.large, c6g.large, m7g.large)
      packages       - OS packages baked in besides the runner's libraries
      volume_size_gb - the image's root volume; a baked template's volume_size_gb must be at least this
      images_kept    - images of the current recipe kept per architecture; older ones are deleted with their
                       snapshots by an Image Builder lifecycle policy
      subnet_id      - subnet of the build instances, with outbound HTTPS to GitHub, the dnf repositories and SSM
                       (default: the first of subnet_ids)
  EOT
  type = object({
    enabled        = optional(bool, false)
    schedule       = optional(string, "cron(0 4 * * ? *)")
    architectures  = optional(list(string), ["x86_64"])
    instance_types = optional(map(list(string)), {})
    packages       = optional(list(string), ["git", "docker"])
    volume_size_gb = optional(number, 10)
    images_kept    = optional(number, 3)
    subnet_id      = optional(string)
  })
  default  = {}
  nullable = false

  validation {
    condition     = can(regex("^cron\\(.+\\)$", var.image_builder.schedule))
    error_message = "image_builder.schedule must be an Image Builder cron expression such as \"cron(0 4 * * ? *)\"."
  }
  validation {
    condition     = length(var.image_builder.architectures) >= 1 && alltrue([for a in var.image_builder.architectures : contains(["x86_64", "arm64"], a)])
    error_message = "image_builder.architectures must list x86_64 and/or arm64."
  }
  validation {
    condition     = alltrue([for a, types in var.image_builder.instance_types : contains(["x86_64", "arm64"], a) && length(types) >= 1 && alltrue([for i in types : can(regex("^[a-z0-9-]+\\.[a-z0-9-]+$", i))])])
    error_message = "image_builder.instance_types maps x86_64 or arm64 to a non-empty list of instance types such as c7i.large."
  }
  validation {
    condition     = alltrue([for p in var.image_builder.packages : can(regex("^[A-Za-z0-9][A-Za-z0-9._+-]*$", p))])
    error_message = "Each entry of image_builder.packages must be a dnf package name: letters, digits and . _ + -, starting with a letter or digit."
  }
  validation {
    condition     = var.image_builder.volume_size_gb >= 8 && var.image_builder.volume_size_gb <= 16384 && floor(var.image_builder.volume_size_gb) == var.image_builder.volume_size_gb
    error_message = "image_builder.volume_size_gb must be a whole number of GB from 8 (Amazon Linux 2023's own size) to 16384."
  }
  validation {
    condition     = var.image_builder.images_kept >= 1 && var.image_builder.images_kept <= 1000 && floor(var.image_builder.images_kept) == var.image_builder.images_kept
    error_message = "image_builder.images_kept must be a whole number from 1 to 1000."
  }
  validation {
    condition     = var.image_builder.subnet_id == null || can(regex("^subnet-[0-9a-f]+$", coalesce(var.image_builder.subnet_id, "x")))
    error_message = "image_builder.subnet_id must look like subnet-0123456789abcdef0."
  }
}

################################################################################
# Lambda functions
################################################################################

variable "lambda_zip_dir" {
  description = "Directory holding `<binary>/bootstrap.zip` for autoscaler, create-runner, stop-runner and move-jobs, as written by `make build`. Null means `target/lambda` at the repository root."
  type        = string
  default     = null
}

variable "lambda_architecture" {
  description = "Instruction set of the Lambda functions; must match the target `make build` compiled for."
  type        = string
  default     = "x86_64"

  validation {
    condition     = contains(["x86_64", "arm64"], var.lambda_architecture)
    error_message = "lambda_architecture must be x86_64 or arm64."
  }
}

variable "lambda_memory_mb" {
  description = "Memory of each Lambda function in MB."
  type        = number
  default     = 128

  validation {
    condition     = var.lambda_memory_mb >= 128 && var.lambda_memory_mb <= 10240
    error_message = "lambda_memory_mb must be between 128 and 10240."
  }
}

variable "lambda_timeouts" {
  description = "Timeout in seconds of each Lambda function. The autoscaler must answer GitHub within 10 s; create-runner must outlast start_deadline_seconds."
  type = object({
    autoscaler    = optional(number, 10)
    create_runner = optional(number, 360)
    stop_runner   = optional(number, 300)
    move_jobs     = optional(number, 300)
  })
  default = {}

  validation {
    condition     = alltrue([for t in values(var.lambda_timeouts) : t >= 3 && t <= 900])
    error_message = "Lambda timeouts must be between 3 and 900 seconds."
  }
  validation {
    condition     = var.lambda_timeouts.autoscaler <= 10
    error_message = "lambda_timeouts.autoscaler must be at most 10 s: GitHub gives up on a delivery after 10 s."
  }
}

variable "lambda_log_level" {
  description = "RUST_LOG filter of the Lambda functions (for example `info` or `info,sophons_core=debug`)."
  type        = string
  default     = "info"

  validation {
    condition     = can(regex("^[A-Za-z0-9_:=,.-]+$", var.lambda_log_level))
    error_message = "lambda_log_level must be a RUST_LOG filter such as `info` or `warn,sophons_core=debug`."
  }
}

variable "lambda_tracing_mode" {
  description = "X-Ray tracing mode of the Lambda functions: PassThrough (no cost unless the caller samples) or Active."
  type        = string
  default     = "PassThrough"

  validation {
    condition     = contains(["PassThrough", "Active"], var.lambda_tracing_mode)
    error_message = "lambda_tracing_mode must be PassThrough or Active."
  }
}

variable "create_runner_batch_size" {
  description = "Jobs handed to one create-runner invocation."
  type        = number
  default     = 5

  validation {
    condition     = var.create_runner_batch_size >= 1 && var.create_runner_batch_size <= 10
    error_message = "create_runner_batch_size must be between 1 and 10."
  }
}

variable "create_runner_max_concurrency" {
  description = "Most create-runner invocations the jobs queue drives at once (event source mapping maximum concurrency, 2-1000). Bounds the launch rate and the GitHub API rate."
  type        = number
  default     = 10

  validation {
    condition     = var.create_runner_max_concurrency >= 2 && var.create_runner_max_concurrency <= 1000
    error_message = "create_runner_max_concurrency must be between 2 and 1000."
  }
}

################################################################################
# Behaviour (written to the config document the Lambdas read)
################################################################################

variable "max_body_bytes" {
  description = "Largest webhook body the autoscaler accepts."
  type        = number
  default     = 1048576

  validation {
    condition     = var.max_body_bytes >= 1024 && var.max_body_bytes <= 26214400
    error_message = "max_body_bytes must be between 1 KiB and 25 MiB."
  }
}

variable "retry_delay_seconds" {
  description = "How long a job handed back to the queue (no capacity, template full) stays hidden before the next attempt."
  type        = number
  default     = 900

  validation {
    condition     = var.retry_delay_seconds >= 0 && var.retry_delay_seconds <= 43200
    error_message = "retry_delay_seconds must be between 0 and 43200 (the SQS maximum)."
  }
}

variable "max_receive_count" {
  description = "Receives of a job message before SQS moves it to the dead-letter queue."
  type        = number
  default     = 3

  validation {
    condition     = var.max_receive_count >= 1 && var.max_receive_count <= 1000
    error_message = "max_receive_count must be between 1 and 1000."
  }
}

variable "command_timeout_seconds" {
  description = "Longest a runner (one job) may run: the SSM command's execution timeout."
  type        = number
  default     = 21600

  validation {
    condition     = var.command_timeout_seconds >= 60 && var.command_timeout_seconds <= 172800
    error_message = "command_timeout_seconds must be between 60 and 172800 (the AWS-RunShellScript maximum)."
  }
}

variable "start_deadline_seconds" {
  description = "How long create-runner keeps retrying SendCommand while the new instance's SSM agent registers."
  type        = number
  default     = 300

  validation {
    condition     = var.start_deadline_seconds >= 30 && var.start_deadline_seconds <= 840
    error_message = "start_deadline_seconds must be between 30 and 840."
  }
}

variable "max_runner_lifetime_seconds" {
  description = "The sweep terminates any runner instance older than this."
  type        = number
  default     = 28800

  validation {
    condition     = var.max_runner_lifetime_seconds >= 600 && var.max_runner_lifetime_seconds <= 604800
    error_message = "max_runner_lifetime_seconds must be between 600 and 604800."
  }
}

variable "idle_runner_seconds" {
  description = "The sweep terminates a runner instance that has had no running command for this long."
  type        = number
  default     = 900

  validation {
    condition     = var.idle_runner_seconds >= 300 && var.idle_runner_seconds <= 86400
    error_message = "idle_runner_seconds must be between 300 and 86400."
  }
}

variable "max_job_relaunches" {
  description = "How many times stop-runner queues a job again when its runner ended without running it (died, Spot reclaim, or GitHub gave it another job)."
  type        = number
  default     = 2

  validation {
    condition     = var.max_job_relaunches >= 0 && var.max_job_relaunches <= 10
    error_message = "max_job_relaunches must be between 0 and 10."
  }
}

variable "spot_backoff_after" {
  description = "Spot losses of one template (interruptions, or launches EC2 refused for spot capacity) within spot_backoff_within_minutes after which the template launches on-demand for spot_backoff_on_demand_minutes. 0 turns the back-off off: the template keeps asking for spot (on-demand costs more)."
  type        = number
  default     = 3

  validation {
    condition     = var.spot_backoff_after >= 0 && var.spot_backoff_after <= 1000 && floor(var.spot_backoff_after) == var.spot_backoff_after
    error_message = "spot_backoff_after must be a whole number from 0 (no back-off) to 1000."
  }
}

variable "spot_backoff_within_minutes" {
  description = "The window, in minutes, in which spot_backoff_after spot losses of one template start its back-off."
  type        = number
  default     = 30

  validation {
    condition     = var.spot_backoff_within_minutes >= 1 && var.spot_backoff_within_minutes <= 10080 && floor(var.spot_backoff_within_minutes) == var.spot_backoff_within_minutes
    error_message = "spot_backoff_within_minutes must be a whole number of minutes from 1 to 10080 (a week); turn the back-off off with spot_backoff_after = 0."
  }
}

variable "spot_backoff_on_demand_minutes" {
  description = "How long, in minutes, a template in back-off launches on-demand before it asks for spot again."
  type        = number
  default     = 60

  validation {
    condition     = var.spot_backoff_on_demand_minutes >= 1 && var.spot_backoff_on_demand_minutes <= 10080 && floor(var.spot_backoff_on_demand_minutes) == var.spot_backoff_on_demand_minutes
    error_message = "spot_backoff_on_demand_minutes must be a whole number of minutes from 1 to 10080 (a week); turn the back-off off with spot_backoff_after = 0."
  }
}

variable "sweep_schedule" {
  description = "EventBridge schedule of stop-runner's sweep (orphan instances, leftover JIT parameters, ghost runners)."
  type        = string
  default     = "rate(15 minutes)"

  validation {
    condition     = can(regex("^(rate|cron)\\(.+\\)$", var.sweep_schedule))
    error_message = "sweep_schedule must be a rate(...) or cron(...) expression."
  }
}

variable "move_jobs_schedule" {
  description = "EventBridge schedule of move-jobs (dead-letter queue back to the jobs queue)."
  type        = string
  default     = "rate(1 hour)"

  validation {
    condition     = can(regex("^(rate|cron)\\(.+\\)$", var.move_jobs_schedule))
    error_message = "move_jobs_schedule must be a rate(...) or cron(...) expression."
  }
}

################################################################################
# Webhook and logs
################################################################################

variable "webhook_throttle_rate_limit" {
  description = "Steady-state requests per second the webhook endpoint accepts (API Gateway stage throttling). Each job sends three deliveries (queued, in_progress, completed); 200 a second keeps up with a 256-job matrix queued and starting within a few seconds."
  type        = number
  default     = 200

  validation {
    condition     = var.webhook_throttle_rate_limit >= 1 && var.webhook_throttle_rate_limit <= 10000
    error_message = "webhook_throttle_rate_limit must be between 1 and 10000."
  }
}

variable "webhook_throttle_burst_limit" {
  description = "Burst of requests the webhook endpoint accepts at once (the token bucket's size). 1000 admits a 256-job matrix's queued deliveries arriving together, with room for a second one; GitHub does not redeliver a delivery answered 429 by itself."
  type        = number
  default     = 1000

  validation {
    condition     = var.webhook_throttle_burst_limit >= 1 && var.webhook_throttle_burst_limit <= 5000
    error_message = "webhook_throttle_burst_limit must be between 1 and 5000."
  }
}

variable "log_retention_days" {
  description = "Retention of every CloudWatch log group (Lambda logs, webhook access logs, runner command output)."
  type        = number
  default     = 30

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be one of the values CloudWatch Logs accepts (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, ...)."
  }
}

################################################################################
# Switches for emulators. Keep the defaults in real accounts: they exist only so that the moto test
# (terraform/test/moto) can apply the whole module, and each names the moto gap it works around.
################################################################################

variable "script_bucket_tls_only_policy" {
  description = "Attach the bucket policy that denies non-TLS access to the script bucket. moto evaluates bucket policies without their conditions, so this Deny would refuse every request there."
  type        = bool
  default     = true
}

variable "dlq_redrive_allow_policy" {
  description = "Restrict which queues may use the dead-letter queue (RedriveAllowPolicy). moto accepts but never returns the attribute, so the provider would wait for it forever."
  type        = bool
  default     = true
}

################################################################################
# Monitoring
################################################################################

variable "monitoring" {
  description = <<-EOT
    CloudWatch alarms and a dashboard over the jobs queue, the four functions, the webhook and the `sophons`
    metrics the Lambdas write (docs/monitoring.md says what each alarm means and what to do). On by default; every
    alarm treats missing data as not breaching, so an idle deployment never alarms.
      enabled                 - create the alarms, the dashboard and (with alarm_email) the topic
      alarm_topic_arn         - an existing SNS topic every alarm notifies (ALARM and back to OK)
      alarm_email             - create the topic <deployment>-alarms and subscribe this address (SNS sends it a
                                confirmation mail first); with alarm_topic_arn too, alarms notify both topics
      alarm_topic_kms_key_arn - customer managed KMS key of the created topic; its key policy must let
                                cloudwatch.amazonaws.com use it (kms:Decrypt, kms:GenerateDataKey*). The AWS managed
                                key alias/aws/sns cannot be used: CloudWatch may not use it, and alarms would notify
                                nobody. Null: the topic is not encrypted with KMS (it carries alarm states only)
      dead_letter_jobs        - jobs in the dead-letter queue that raise an alarm
      oldest_job_seconds      - age of the oldest job in the jobs queue, or in a template's waiting list, that raises an alarm
      no_launch_minutes       - jobs waiting in the jobs queue this long while no template launched an instance
                                raises an alarm (a multiple of 5)
      lambda_errors           - errors of one function within 5 minutes that raise an alarm
      lambda_throttles        - throttled invocations of one function within 5 minutes that raise an alarm
      webhook_5xx             - 5xx answers of the webhook within 5 minutes that raise an alarm (GitHub does not
                                redeliver them by itself)
  EOT
  type = object({
    enabled                 = optional(bool, true)
    alarm_topic_arn         = optional(string)
    alarm_email             = optional(string)
    alarm_topic_kms_key_arn = optional(string)
    dead_letter_jobs        = optional(number, 1)
    oldest_job_seconds      = optional(number, 1800)
    no_launch_minutes       = optional(number, 30)
    lambda_errors           = optional(number, 1)
    lambda_throttles        = optional(number, 1)
    webhook_5xx             = optional(number, 1)
  })
  default  = {}
  nullable = false

  validation {
    condition     = var.monitoring.alarm_topic_arn == null || can(regex("^arn:aws[a-z-]*:sns:[a-z0-9-]+:[0-9]{12}:[A-Za-z0-9_-]{1,256}(\\.fifo)?$", coalesce(var.monitoring.alarm_topic_arn, "x")))
    error_message = "monitoring.alarm_topic_arn must be an SNS topic ARN (arn:aws:sns:<region>:<account>:<name>)."
  }
  validation {
    condition     = var.monitoring.alarm_email == null || can(regex("^[^@\\s]+@[^@\\s]+\\.[^@\\s]+$", coalesce(var.monitoring.alarm_email, "x")))
    error_message = "monitoring.alarm_email must be one email address, such as ops@example.com."
  }
  validation {
    condition     = var.monitoring.alarm_topic_kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:(key|alias)/.+$", coalesce(var.monitoring.alarm_topic_kms_key_arn, "x")))
    error_message = "monitoring.alarm_topic_kms_key_arn must be the ARN of a customer managed KMS key (arn:aws:kms:<region>:<account>:key/<id>)."
  }
  validation {
    condition     = !endswith(coalesce(var.monitoring.alarm_topic_kms_key_arn, "x"), ":alias/aws/sns")
    error_message = "monitoring.alarm_topic_kms_key_arn cannot be the AWS managed key alias/aws/sns: CloudWatch may not use it, so no alarm would reach the topic. Use a customer managed key whose policy lets cloudwatch.amazonaws.com use it, or null."
  }
  validation {
    condition = alltrue([for n in [var.monitoring.dead_letter_jobs, var.monitoring.lambda_errors, var.monitoring.lambda_throttles, var.monitoring.webhook_5xx] :
    n >= 1 && floor(n) == n])
    error_message = "monitoring.dead_letter_jobs, lambda_errors, lambda_throttles and webhook_5xx must be whole numbers of at least 1 (0 would alarm on an idle deployment)."
  }
  validation {
    condition     = var.monitoring.oldest_job_seconds >= 60 && var.monitoring.oldest_job_seconds <= 345600
    error_message = "monitoring.oldest_job_seconds must be between 60 and 345600 (the jobs queue keeps a message 4 days)."
  }
  validation {
    condition     = var.monitoring.no_launch_minutes >= 10 && var.monitoring.no_launch_minutes <= 1440 && var.monitoring.no_launch_minutes % 5 == 0
    error_message = "monitoring.no_launch_minutes must be a multiple of 5 from 10 to 1440 (the alarm looks at 5-minute periods, at most a day)."
  }
}
