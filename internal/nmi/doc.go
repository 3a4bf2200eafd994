// Package nmi is the node agent's data plane: the IMDS look-alike that pods reach through the
// DNAT rule, and the node-local state it answers from.
//
// A token request's path through the files:
//
//   - server.go: Server.ServeHTTP routes by imdsreq.Classify (token, host token, blocked,
//     everything else to proxy.go); serveToken parses the query (imdsreq.ParseTokenQuery) and
//     finds the caller by source IP (findPod, store.go podByIP). Excepted pods and MIC's pods
//     get IMDS itself (proxy.go passthrough).
//   - authorize.go: tokenFor → resolve → evaluate decide, under the store's read lock, which bound
//     identity the query selects (store.go boundIdentitiesLocked, internal/binding rules; weight
//     order) and whether it can be served now: in standard mode a managed identity waits for
//     MIC's Assigned AzureAssignedIdentity; a federated identity (spec.federation) never waits,
//     it is on no VM. policy.go checkPolicy refuses Secrets in other namespaces and Azure AD
//     hosts not allowed (adEndpoint, federation.authorityHost).
//   - fetch.go: credentials picks the TokenSource and the cache key (credkey.go: a struct with
//     every field that selects the credentials); fetch answers from the cache (cache.go
//     TokenCache) or, within the pod's rate budget (ratelimit.go), fetches with fetchRetry,
//     which prefetches share.
//   - Token sources (source.go TokenSource): IMDSClient (type 0, the node's IMDS; verify.go
//     checks the token is the identity's), ServicePrincipalSource (types 1 and 2, with their
//     Secret; serviceprincipal.go), and FederatedSource (federated.go): satoken.go mints a
//     ServiceAccount token bound to the pod (TokenRequest; broker identities: NMI's own, bound to
//     NMI's pod; fedserver.go subjectFor), reused until 80% of its life, which Azure AD exchanges
//     as a client assertion. Federated tokens are cached per ServiceAccount (Azure AD authorized
//     that ServiceAccount), prefetched when a bound pod becomes Running (fedserver.go podRunning)
//     and dropped when its last pod on the node goes (podGone).
//   - errors.go statusOf maps every error to one status code; fedcredential.go turns Azure AD's
//     "no matching federated credential" into 503 + Retry-After within the propagation window,
//     else 403 with the az command that fixes it; refusals.go logs refusals (sampled) and
//     reports those an identity's owner must fix as Warning events on the bindings.
//
// Start: run.go New and Agent.Run wire everything below (store, watches, Secret watcher, event
// recorder, Server, token listener with its timeouts, graceful stop) for cmd/nmi and the tests.
//
// State: watch.go feeds store.go (pods of this node, assignments, identities, bindings,
// exceptions); config.go holds the settings (defaults, Validate); metrics.go the Prometheus
// metrics. The single-flight of cache fills and ServiceAccount token mints is flight.go.
package nmi
