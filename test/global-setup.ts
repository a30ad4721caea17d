import { execa } from 'execa';

/** Integration and conformance tests run the built CLI, as a user would. */
export default async function setup(): Promise<void> {
  await execa('npx', ['tsc', '-p', 'tsconfig.json'], { stdio: 'inherit' });
}
