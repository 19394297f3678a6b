# Launch slots: one item per launch in flight or instance alive, keyed by its template and slot number
# (0 <= slot < max_runners). create-runner claims a slot with a PutItem conditioned on attribute_not_exists, which
# only one caller can win, so concurrent invocations never launch past max_runners; stop-runner and the sweep
# delete the item when the instance ends or its claimant died.
#
# Not SSM Parameter Store (where slots lived before): PutParameter's account-wide throughput, a few calls per
# second by default, bounded how fast a burst of jobs could claim slots. DynamoDB conditional writes are made
# for this, and on-demand capacity needs no sizing.
resource "aws_dynamodb_table" "slots" {
  #checkov:skip=CKV_AWS_119:A claim holds a job id, a slot number and a time, no secret; the AWS owned key encrypts it at rest without a key policy to keep in step with the Lambda roles.
  #checkov:skip=CKV_AWS_28:Claims are ephemeral and rebuilt by nothing: a lost table only means launches claim their slots again, so there is nothing to restore to a point in time.
  name         = "${var.deployment}-slots"
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "template"
  range_key    = "slot"

  attribute {
    name = "template"
    type = "S"
  }

  attribute {
    name = "slot"
    type = "N"
  }

  # No server_side_encryption block: DynamoDB encrypts every table at rest, by default with the AWS owned key
  # (like the queues' sqs_managed_sse_enabled): no KMS charges, no key policy. The AWS managed key would add
  # KMS charges, a customer managed key a key policy, and neither protects anything more here.

  tags = local.tags
}
