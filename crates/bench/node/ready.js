// What a Node.js Lambda of a peer does before its first event: load the SQS client of the AWS SDK
// for JavaScript v3 and build it (region and endpoint from the environment). Then, as Lambda's
// runtime does, ask the Runtime API for the first event: that request ends Init Duration.
// (No config document or secrets are read: Node does less here than the Rust binaries do.)
const { SQSClient } = require("@aws-sdk/client-sqs");
const http = require("node:http");

globalThis.client = new SQSClient({});
http
  .get(`http://${process.env.AWS_LAMBDA_RUNTIME_API}/2018-06-01/runtime/invocation/next`, (response) =>
    response.resume(),
  )
  .on("error", () => process.exit(1));
