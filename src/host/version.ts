/** This build's version (package.json's): `myrixen --version` and every host snapshot show it. */
export const MYRIXEN_VERSION = "0.1.0";
