variable "name" {
  description = "Function name; also names its role and its log group `/aws/lambda/<name>`."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{1,64}$", var.name))
    error_message = "name must be 1-64 characters of [A-Za-z0-9_-]."
  }
}

variable "description" {
  description = "What the function does."
  type        = string
}

variable "zip_file" {
  description = "Path of the deployment package (a zip holding the `bootstrap` executable)."
  type        = string
}

variable "architecture" {
  description = "x86_64 or arm64."
  type        = string

  validation {
    condition     = contains(["x86_64", "arm64"], var.architecture)
    error_message = "architecture must be x86_64 or arm64."
  }
}

variable "memory_mb" {
  description = "Memory in MB."
  type        = number
  default     = 128
}

variable "timeout_seconds" {
  description = "Timeout in seconds."
  type        = number
}

variable "environment" {
  description = "Environment variables (no secrets: Lambda environment is readable by anyone who can read the function)."
  type        = map(string)
  default     = {}
}

variable "policy_json" {
  description = "IAM policy document (JSON) of the function's own role, on top of writing its own log group."
  type        = string
}

variable "log_retention_days" {
  description = "Retention of the function's log group."
  type        = number
}

variable "tracing_mode" {
  description = "X-Ray tracing mode: PassThrough or Active (Active also lets the role send traces)."
  type        = string
  default     = "PassThrough"

  validation {
    condition     = contains(["PassThrough", "Active"], var.tracing_mode)
    error_message = "tracing_mode must be PassThrough or Active."
  }
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
