"""``sophos-central-api-connector`` (PyPI, by Sophos): the steps of its ``ten_auth`` and
``get_data`` for the inventory and alerts of two tenants.

Host settings changed as its users change them: the URIs in its
``config/sophos_central_api_config.py``. ``ten_auth`` itself reads the secret from AWS Secrets
Manager or a terminal prompt, so the script makes the calls ``ten_auth`` makes, in its order.
"""

import json
import sys

import sophos_central_api_connector.config.sophos_central_api_config as config

with open(sys.argv[1], encoding="utf-8") as handle:
    settings = json.load(handle)
api = settings["api_url"]
config.auth_uri = f"{api}/api/v2/oauth2/token"
config.whoami_uri = f"{api}/whoami/v1"
config.tenants_ptr_uri = f"{api}/partner/v1/tenants"
config.tenants_org_uri = f"{api}/organization/v1/tenants"

from sophos_central_api_connector import sophos_central_api_auth as auth  # noqa: E402
from sophos_central_api_connector import sophos_central_api_connector_utils as utils  # noqa: E402
from sophos_central_api_connector import sophos_central_api_get_data as get_data  # noqa: E402
from sophos_central_api_connector import sophos_central_api_tenants as tenants  # noqa: E402

token = auth.get_bearer_tok(settings["client_id"], settings["client_secret"], config.auth_uri)
headers = auth.validate_id_headers(token)
whoami_id, whoami_type, whoami_data = auth.get_whoami_data(headers, config.whoami_uri)
header_type, tenant_url = auth.validate_whoami_type(
    whoami_type, whoami_data, config.tenants_ptr_uri, config.tenants_org_uri
)
tenant_headers = tenants.gen_tenant_headers(headers, whoami_id, whoami_type, header_type)
if whoami_type == "tenant":
    tenant_info = tenants.type_tenant(tenant_headers, whoami_id, tenant_url, token)
else:
    tenant_info = tenants.get_tenant_info(headers, tenant_url, token)

probe = {k: v for k, v in tenant_info.items() if k in settings["probe_tenants"]}
to_str, from_str = utils.calculate_from_to(1, None)
result = {
    "whoami_type": whoami_type,
    "tenants": {k: {"name": v["name"], "apiHost": v["page_url"]} for k, v in tenant_info.items()},
    "from": from_str,
    "to": to_str,
    "per_tenant": {},
}
for api_name, page_size in (("endpoint", 10), ("common", 50)):
    urls = utils.generate_tenant_urls(probe, page_size, api_name, from_str, to_str)
    for tenant_id in urls:
        items = get_data.get_data(urls, page_size, tenant_id, api_name)
        result["per_tenant"].setdefault(tenant_id, {})[api_name] = list(items.values())
with open(sys.argv[2], "w", encoding="utf-8") as out:
    json.dump(result, out)
