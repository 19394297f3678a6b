variable "region" {
  description = "AWS region to deploy to."
  type        = string
  default     = "eu-west-1"
}

variable "github_owner" {
  description = "The GitHub organization the App is installed on."
  type        = string
}

variable "github_app_id" {
  description = "The GitHub App's id."
  type        = number
}

variable "github_app_installation_id" {
  description = "The App's installation id on github_owner."
  type        = number
}

variable "github_app_private_key" {
  description = "The App's private key (PEM)."
  type        = string
  sensitive   = true
}

variable "webhook_secret" {
  description = "The webhook secret (give GitHub the same value)."
  type        = string
  sensitive   = true
}

variable "vpc_id" {
  description = "VPC of the runners."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets (with a NAT gateway or VPC endpoints) of the runners, in several availability zones."
  type        = list(string)
}
