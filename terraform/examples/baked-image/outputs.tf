output "webhook_url" {
  description = "Payload URL for the organization webhook."
  value       = module.sophons.webhook_url
}

output "image_builder_pipeline_arns" {
  description = "The image pipeline of each architecture: start the first build with aws imagebuilder start-image-pipeline-execution."
  value       = module.sophons.image_builder_pipeline_arns
}

output "baked_image_parameter_names" {
  description = "Where each architecture's latest baked AMI id is published."
  value       = module.sophons.baked_image_parameter_names
}
