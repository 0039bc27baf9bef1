/** @type {import('next').NextConfig} */
const nextConfig = {
  // A self-contained server.js + the node_modules it needs: what ssedeploy releases.
  output: 'standalone',
};

export default nextConfig;
