package nmi

import (
	"crypto/tls"
	"fmt"
	"net/http"

	"github.com/podidentity/podidentity/internal/azureconfig"
)

// LoadCloud points service-principal identities (types 1 and 2) at the cloud MIC uses: the
// custom-cloud file named by AZURE_ENVIRONMENT_FILEPATH (or a known cloud named by CLOUD), read
// with MIC's own parser so that both components agree on the file's format. The file's
// activeDirectoryEndpoint becomes the default authority host (an identity's adEndpoint still
// wins) and its caBundle, when set, the CAs trusted for Azure AD. getenv is os.Getenv in
// production. The file is read once, at start: NMI is restarted to pick up a changed cloud.
func (c *Config) LoadCloud(getenv func(string) string) error {
	if getenv(azureconfig.EnvironmentFileVar) == "" && getenv("CLOUD") == "" {
		return nil // public cloud, system CAs: the defaults
	}
	s, err := azureconfig.Load("", func(k string) string {
		switch k {
		case azureconfig.EnvironmentFileVar, "CLOUD":
			return getenv(k)
		case "SUBSCRIPTION_ID", "RESOURCE_GROUP":
			// Load also validates MIC's ARM settings, which NMI never uses; placeholders keep
			// those checks from failing so that only the cloud part can.
			return "unused-by-nmi"
		case "USE_MSI":
			return "true"
		}
		return ""
	})
	if err != nil {
		return fmt.Errorf("reading the Azure cloud for service-principal identities: %w; fix the file %s names (or unset it and CLOUD for the public cloud)", err, azureconfig.EnvironmentFileVar)
	}
	c.AuthorityHost = s.Env.ActiveDirectoryEndpoint
	if s.CAs != nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = &tls.Config{RootCAs: s.CAs, MinVersion: tls.VersionTLS12}
		c.AADClientOptions.Transport = &http.Client{Transport: tr}
	}
	return nil
}
