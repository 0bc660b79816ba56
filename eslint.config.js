import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/', 'node_modules/', 'coverage/'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      // Core modules never import the CLI, server or agent (DESIGN.md: one direction of imports).
      'no-restricted-imports': 'off',
    },
  },
  {
    files: ['src/image/**', 'src/chunk/**', 'src/store/**', 'src/release/**', 'src/delta/**', 'src/fleet/**', 'src/boot/**', 'src/util/**', 'src/errors.ts'],
    rules: {
      'no-restricted-imports': ['error', { patterns: [
        { group: ['**/cli/**', '../cli/*', '../../cli/*'], message: 'core never imports cli' },
        { group: ['**/server/**', '../server/*', '../../server/*'], message: 'core never imports server' },
        { group: ['**/agent/**', '../agent/*', '../../agent/*'], message: 'core never imports agent' },
      ] }],
    },
  },
  {
    files: ['**/*.js', 'bin/*'],
    languageOptions: { globals: { process: 'readonly', console: 'readonly' } },
  },
);
