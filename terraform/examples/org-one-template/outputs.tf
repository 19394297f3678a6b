output "webhook_url" {
  description = "Payload URL for the organization webhook."
  value       = module.sophons.webhook_url
}

output "webhook_secret_parameter_name" {
  description = "Parameter holding the webhook secret."
  value       = module.sophons.webhook_secret_parameter_name
}

output "log_group_names" {
  description = "Where the logs are."
  value       = module.sophons.log_group_names
}
