"""The sandbox hosts, deploying the real Next.js example (`make demo-nextjs` builds it first)."""

from ssedeploy.inventory import sandbox_hosts

sandbox = (sandbox_hosts(), {"app": {"source": "examples/nextjs-sse"}})
