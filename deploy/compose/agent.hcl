# The compose loop's consumer-side agent: OpenBao Agent (`bao agent`, the openbao image) renders
# the demo key to the shared volume `rendered`, where the sample consumer reads it.
# Paths are the container's, as docker-compose.yml mounts them.

vault {
  address = "http://vault:8200"
}

auto_auth {
  # The token the seeder created with the consumer policy (deploy/compose/consumer-policy.hcl):
  # read on this one secret, nothing else.
  method "token_file" {
    config = {
      token_file_path = "/agent/auth/token"
    }
  }
}

template_config {
  # KV v2 secrets are re-read only this often (default 5m): short here so the loop turns fast.
  static_secret_render_interval = "5s"
}

template {
  source      = "/agent/template/arouter-api-key.ctmpl"
  destination = "/rendered/api_key"
  perms       = "0400"
  error_on_missing_key = true
}
