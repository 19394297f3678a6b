# HTTP API: POST /webhook -> autoscaler (payload format 2.0), throttled, with access logs.
# There is no API authorizer on purpose: GitHub cannot send one. The autoscaler verifies
# X-Hub-Signature-256 over the raw body with the webhook secret before anything is queued.

resource "aws_apigatewayv2_api" "webhook" {
  name          = "${var.deployment}-webhook"
  description   = "GitHub workflow_job webhook of the ${var.deployment} runners"
  protocol_type = "HTTP"
  tags          = local.tags
}

resource "aws_apigatewayv2_integration" "webhook" {
  api_id                 = aws_apigatewayv2_api.webhook.id
  integration_type       = "AWS_PROXY"
  integration_method     = "POST"
  integration_uri        = module.autoscaler.invoke_arn
  payload_format_version = "2.0"
  timeout_milliseconds   = 10000
}

resource "aws_apigatewayv2_route" "webhook" {
  #checkov:skip=CKV_AWS_309:GitHub webhooks cannot carry an API Gateway authorizer; every delivery is authenticated by its HMAC signature (X-Hub-Signature-256) in the autoscaler before anything is queued.
  api_id    = aws_apigatewayv2_api.webhook.id
  route_key = "POST /webhook"
  target    = "integrations/${aws_apigatewayv2_integration.webhook.id}"
}

resource "aws_cloudwatch_log_group" "webhook_access" {
  #checkov:skip=CKV_AWS_158:Access logs hold request metadata only (no bodies, no secrets); the CloudWatch Logs default encryption applies.
  #checkov:skip=CKV_AWS_338:Retention is the log_retention_days variable (30 days by default).
  name              = "/aws/apigateway/${var.deployment}-webhook"
  retention_in_days = var.log_retention_days
  tags              = local.tags
}

resource "aws_apigatewayv2_stage" "webhook" {
  api_id      = aws_apigatewayv2_api.webhook.id
  name        = "$default"
  auto_deploy = true

  default_route_settings {
    throttling_rate_limit  = var.webhook_throttle_rate_limit
    throttling_burst_limit = var.webhook_throttle_burst_limit
  }

  access_log_settings {
    destination_arn = aws_cloudwatch_log_group.webhook_access.arn
    format = jsonencode({
      requestId         = "$context.requestId"
      ip                = "$context.identity.sourceIp"
      requestTime       = "$context.requestTime"
      routeKey          = "$context.routeKey"
      status            = "$context.status"
      responseLength    = "$context.responseLength"
      integrationError  = "$context.integrationErrorMessage"
      integrationStatus = "$context.integrationStatus"
      latency           = "$context.responseLatency"
    })
  }

  tags = local.tags
}

resource "aws_lambda_permission" "webhook" {
  statement_id  = "AllowWebhookApi"
  action        = "lambda:InvokeFunction"
  function_name = module.autoscaler.function_name
  principal     = "apigateway.amazonaws.com"
  source_arn    = "${aws_apigatewayv2_api.webhook.execution_arn}/*/POST/webhook"
}
