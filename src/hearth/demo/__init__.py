"""The demo: everything that shows Hearth working without a real provider account, kept
apart from the product, which imports only the demo provider's spec (hearth.providers
registers it).

- stack: `hearth demo`'s controller, VM network and identity provider, each in a namespace
- idp: the bundled OpenID Connect provider (`python -m hearth.demo.idp`)
- provider: the `demo` provider's spec
- guest: the demo CLI's login and prompt commands, copied into every image beside the agent
- sandbox: throwaway network namespaces for the demo, tests and benches
"""

# hearth.providers registers .provider's spec, and .provider builds on hearth.providers.base:
# importing the registry first keeps that cycle one way, whichever demo module comes first.
import hearth.providers  # noqa: F401
